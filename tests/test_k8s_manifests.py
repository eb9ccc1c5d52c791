"""The sandbox Job, its Secret and the NetworkPolicy as rendered, and every file in
deploy/k8s/, validated against the Kubernetes 1.37 schemas in strict mode (unknown
or misspelt fields fail), plus the hardening fields each sandbox pod must carry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

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


def _deploy_docs() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return docs


@pytest.mark.parametrize(
    ("where", "doc"), _deploy_docs(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_deploy_manifests_validate(where: str, doc: dict[str, Any]) -> None:
    _valid(doc)


def test_deploy_network_policy_is_the_rendered_one() -> None:
    policies = [d for _, d in _deploy_docs() if d["kind"] == "NetworkPolicy"]
    assert m.render_network_policy(m.NetworkPolicyParams()) in policies


def test_deploy_runner_role_grants_exactly_what_the_backend_calls() -> None:
    (role,) = [
        d
        for _, d in _deploy_docs()
        if d["kind"] == "Role" and d["metadata"]["name"] == "jetty-runner"
    ]
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
