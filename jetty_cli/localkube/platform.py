"""The whole platform inside the local cluster: ``deploy/k8s/overlays/local``
rendered with kustomize, completed with what only the running cluster knows, and
applied with kubectl (``python -m jetty_cli.localkube platform``, ``make k8s-platform``).

What rendering fills in: the image tags ``make images`` built
(``.jetty/images/*.env``), the API server's loopback port for the runner
(``KUBERNETES_SERVICE_PORT``; the cluster has no kube-proxy, so the
``kubernetes`` Service's address leads nowhere), a random bootstrap token, and
any provider settings for the proxy (``OPENAI_BASE_URL`` of a fake upstream in
the tests). Ready means every Deployment and StatefulSet has its pods Ready and
the migrations Job has succeeded.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from jetty_cli.localkube.cluster import REPO, LocalCluster
from jetty_cli.procs import port_open

OVERLAY = REPO / "deploy" / "k8s" / "overlays" / "local"
NAMESPACE = "jetty"
GATEWAY_URL = "http://127.0.0.1:18080"
#: every loopback port the overlay's pods bind (deploy/k8s/overlays/local/ports.yaml)
PORTS = (18080, 18181, 18182, 18183, 18184, 14222, 18222, 15432, 19000)
SELECTOR = "app.kubernetes.io/part-of=jetty"
#: what a teardown keeps: the namespace and its RBAC (a runner outside may use them)
KEPT = ("Namespace", "ServiceAccount", "Role", "RoleBinding")


class PlatformError(Exception):
    pass


def kubectl() -> str:
    candidate = Path(sys.executable).parent / "kubectl"
    return str(candidate) if candidate.is_file() else "kubectl"


def built_images() -> dict[str, str]:
    """``{"jetty": "localhost/jetty:<tag>", ...}`` from ``make images``."""
    out: dict[str, str] = {}
    for env in sorted((REPO / ".jetty" / "images").glob("*.env")):
        values = dict(line.split("=", 1) for line in env.read_text().split())
        out[env.stem] = values["IMAGE"]
    return out


def render(
    cluster: LocalCluster,
    images: Mapping[str, str],
    token: str,
    provider_env: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    text = subprocess.run(
        [kubectl(), "kustomize", str(OVERLAY)], check=True, capture_output=True, text=True
    ).stdout
    docs = [d for d in yaml.safe_load_all(text) if d]
    api_port = str(cluster.ports().apiserver)
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind in ("Deployment", "StatefulSet", "Job"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                repo = container["image"].rsplit(":", 1)[0]
                short = repo.removeprefix("localhost/")
                if short in images:
                    container["image"] = images[short]
                container["imagePullPolicy"] = "Never"
                for env in container.get("env", []):
                    if env["name"] == "KUBERNETES_SERVICE_PORT":
                        env["value"] = api_port
        elif kind == "ConfigMap" and name == "jetty-config" and "jetty-sandbox" in images:
            doc["data"]["JETTY_K8S_SANDBOX_IMAGE"] = images["jetty-sandbox"]
        elif kind == "Secret" and name == "jetty-bootstrap":
            doc["stringData"]["JETTY_BOOTSTRAP_TOKEN"] = token
        elif kind == "Secret" and name == "jetty-provider-keys":
            doc["stringData"].update(provider_env or {})
    return docs


def _kubectl(cluster: LocalCluster, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [kubectl(), f"--kubeconfig={cluster.kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise PlatformError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def apply(cluster: LocalCluster, docs: list[dict[str, Any]]) -> None:
    # Namespace first: the rest of one `kubectl apply` may race its creation.
    first = [d for d in docs if d["kind"] == "Namespace"]
    rest = [d for d in docs if d["kind"] != "Namespace"]
    for batch in (first, rest):
        _kubectl(cluster, "apply", "-f", "-", stdin=yaml.safe_dump_all(batch))


def _deployed(cluster: LocalCluster) -> bool:
    try:
        _kubectl(cluster, "-n", NAMESPACE, "get", "deployment", "jetty-gateway")
    except PlatformError:
        return False
    return True


def not_ready(cluster: LocalCluster) -> list[str]:
    """What is not Ready yet (empty: everything is)."""
    listing = json.loads(
        _kubectl(cluster, "-n", NAMESPACE, "get", "deployments,statefulsets,jobs", "-o", "json")
    )
    waiting: list[str] = []
    for item in listing["items"]:
        kind, name = item["kind"], item["metadata"]["name"]
        if kind == "Job" and name != "jetty-migrate":
            continue  # a runbook's Job
        status = item.get("status", {})
        if kind == "Job":
            if not status.get("succeeded"):
                waiting.append(f"job/{name}")
        elif status.get("readyReplicas", 0) < item["spec"].get("replicas", 1):
            waiting.append(f"{kind.lower()}/{name}")
    return waiting


def wait_ready(cluster: LocalCluster, timeout: float = 300.0) -> float:
    start = time.monotonic()
    while True:
        waiting = not_ready(cluster)
        if not waiting:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            pods = _kubectl(cluster, "-n", NAMESPACE, "get", "pods", "-o", "wide")
            raise PlatformError(f"not Ready after {timeout:.0f} s: {waiting}\n{pods}")
        time.sleep(1.0)


def up(
    cluster: LocalCluster,
    *,
    provider_env: Mapping[str, str] | None = None,
    timeout: float = 300.0,
) -> tuple[str, float]:
    """Render, apply, wait: returns the bootstrap token and the seconds from the
    apply to every pod Ready."""
    images = built_images()
    missing = {"jetty", "jetty-data", "jetty-sandbox"} - set(images)
    if missing:
        raise PlatformError(f"images not built: {sorted(missing)} (make images)")
    taken = [p for p in PORTS if port_open("127.0.0.1", p)]
    if taken and not _deployed(cluster):  # else an earlier apply of ours: this updates it
        raise PlatformError(f"loopback ports the local overlay uses are taken: {taken}")
    token = "jetty-local-" + secrets.token_urlsafe(24)
    docs = render(cluster, images, token, provider_env)
    start = time.monotonic()
    apply(cluster, docs)
    wait_ready(cluster, timeout)
    return token, time.monotonic() - start


def down(cluster: LocalCluster, timeout: float = 120.0) -> None:
    """Delete the platform's workloads (the namespace and its RBAC stay) and wait
    for their pods to be gone, so that their loopback ports are free again."""
    text = subprocess.run(
        [kubectl(), "kustomize", str(OVERLAY)], check=True, capture_output=True, text=True
    ).stdout
    names = [
        f"{d['kind'].lower()}/{d['metadata']['name']}"
        for d in yaml.safe_load_all(text)
        if d and d["kind"] not in KEPT
    ]
    _kubectl(cluster, "-n", NAMESPACE, "delete", *names, "--ignore-not-found", "--wait=false")
    deadline = time.monotonic() + timeout
    forced = time.monotonic() + 20
    pods: list[Any] = []
    while time.monotonic() < deadline:
        listing = _kubectl(cluster, "-n", NAMESPACE, "get", "pods", "-o", "json", "-l", SELECTOR)
        pods = json.loads(listing)["items"]
        if not pods:
            return
        if time.monotonic() > forced:  # their controllers are gone: nothing recreates them
            _kubectl(
                cluster, "-n", NAMESPACE, "delete", "pods", "-l", SELECTOR,
                "--grace-period=0", "--force", "--wait=false",
            )  # fmt: skip
            forced = deadline
        time.sleep(1.0)
    names = [p["metadata"]["name"] for p in pods]
    raise PlatformError(f"the platform's pods did not go: {names}")
