"""The cluster tier's fixtures: one real local Kubernetes per test session
(``jetty_cli.localkube``), the images of ``make images`` imported into it, and
the runner's namespace with exactly the RBAC of ``deploy/k8s``.

Where the tier cannot run (not root, not Debian) every test that needs it is
skipped and the session ends with one line saying why. At the end of the
session the cluster is stopped and the machine compared with how it was before
the start: any difference (a kernel setting, an iptables chain, a mount, a
cgroup, a process) fails the session.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import utils as k8s_utils

from jetty_cli.localkube.cluster import REPO, LocalCluster, cannot_run_reason
from jetty_cli.localkube.pki import write_kubeconfig

NAMESPACE = "jetty"
RBAC = REPO / "deploy" / "k8s" / "base" / "rbac.yaml"
_SKIPPED: list[str] = []


@dataclass(frozen=True)
class Images:
    services: str
    sandbox: str


@dataclass
class Cluster:
    local: LocalCluster
    images: Images
    start_seconds: float
    runner_kubeconfig: Path

    @property
    def kubeconfig(self) -> Path:
        return self.local.kubeconfig

    def api(self) -> k8s.ApiClient:
        return client_for(self.kubeconfig)

    def runner_api(self) -> k8s.ApiClient:
        return client_for(self.runner_kubeconfig)


def client_for(kubeconfig: Path) -> k8s.ApiClient:
    configuration = k8s.Configuration()
    k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig), client_configuration=configuration
    )
    return k8s.ApiClient(configuration)


def build_images() -> tuple[Images, list[Path]]:
    subprocess.run([str(REPO / "deploy" / "images" / "build.sh")], check=True)
    env: dict[str, dict[str, str]] = {}
    for name in ("jetty", "jetty-sandbox", "jetty-data"):
        text = (REPO / ".jetty" / "images" / f"{name}.env").read_text()
        env[name] = dict(line.split("=", 1) for line in text.split())
    images = Images(env["jetty"]["IMAGE"], env["jetty-sandbox"]["IMAGE"])
    # jetty-data: the data stores of the platform in the cluster (test_k8s_platform.py)
    return images, [Path(env[n]["ARCHIVE"]) for n in env]


def apply_docs(api: k8s.ApiClient, docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        try:
            k8s_utils.create_from_dict(api, doc)  # type: ignore[no-untyped-call]
        except k8s_utils.FailToCreateError as exc:
            if not all(getattr(e, "status", 0) == 409 for e in exc.api_exceptions):
                raise


def runner_kubeconfig(cluster: LocalCluster, api: k8s.ApiClient, out: Path) -> Path:
    """A kubeconfig with the token of ServiceAccount ``jetty-runner`` (the RBAC
    under test), as the runner would have in its pod."""
    core = k8s.CoreV1Api(api)
    deadline = time.monotonic() + 60
    while True:
        sa = core.read_namespaced_service_account("jetty-runner", NAMESPACE)
        if sa.secrets:
            break
        assert time.monotonic() < deadline, "no token for jetty-runner"
        time.sleep(0.2)
    secret = core.read_namespaced_secret(str(sa.secrets[0].name), NAMESPACE)
    token = base64.b64decode((secret.data or {})["token"]).decode()
    write_kubeconfig(
        out, cluster.api_server, cluster.state / "pki" / "ca.crt", token, "jetty-runner"
    )
    return out


@pytest.fixture(scope="session")
def k8s_cluster() -> Iterator[Cluster]:
    reason = cannot_run_reason()
    if reason:
        _SKIPPED.append(reason)
        pytest.skip(f"cluster tier skipped: {reason}")
    images, archives = build_images()
    local = LocalCluster(REPO / ".jetty" / "k8s-test")
    local.down()  # a previous session killed hard: start clean
    seconds = local.up(archives)
    try:
        api = client_for(local.kubeconfig)
        core = k8s.CoreV1Api(api)
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        apply_docs(api, [namespace, *[d for d in yaml.safe_load_all(RBAC.read_text()) if d]])
        runner = runner_kubeconfig(local, api, local.state / "runner.kubeconfig")
        assert core.read_namespace(NAMESPACE)
        yield Cluster(local, images, seconds, runner)
    finally:
        left = local.down()
        assert not left, "the cluster left the machine changed:\n" + "\n".join(left)


def report_skipped(terminalreporter: Any) -> None:
    """The one loud line when the tier could not run (pytest_terminal_summary)."""
    if _SKIPPED:
        terminalreporter.write_line(
            f"CLUSTER TIER NOT RUN: {_SKIPPED[0]} - the Kubernetes tests were skipped",
            red=True,
            bold=True,
        )


def job_pods(api: k8s.ApiClient, job: str) -> list[Any]:
    pods = k8s.CoreV1Api(api).list_namespaced_pod(NAMESPACE, label_selector=f"job-name={job}")
    return list(pods.items)


def dump(obj: Any) -> str:
    plain = k8s.ApiClient().sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
    return json.dumps(plain, indent=1)[:3000]
