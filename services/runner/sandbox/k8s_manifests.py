"""The Kubernetes objects of the ``kubernetes`` sandbox backend, as plain dicts.

Pure functions, no client and no I/O: the backend sends what they return, the
tests validate it against the Kubernetes schemas, and ``deploy/k8s/`` holds the
same NetworkPolicy rendered once. What must stay true of every sandbox pod
(Pod Security "restricted" and then some):

* no service-account token, no service links, non-root uid 1000, seccomp
  ``RuntimeDefault``, no privilege escalation, every capability dropped, a
  read-only root filesystem with ``emptyDir`` volumes for the workspace, ``$HOME``
  and ``/tmp``;
* one attempt (``backoffLimit: 0``, ``restartPolicy: Never``), a hard deadline
  (``activeDeadlineSeconds``) and garbage collection (``ttlSecondsAfterFinished``);
* the labels the NetworkPolicy selects on (:data:`ROLE_LABEL`).

The run's command, token and presigned URLs travel in a per-run Secret mounted
read-only at :data:`RUN_CONFIG_DIR`, never in the Job spec.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

Manifest = dict[str, Any]

#: label every sandbox pod carries; the NetworkPolicy selects on it
ROLE_LABEL = "jetty.dev/role"
ROLE_SANDBOX = "sandbox"
TRAJECTORY_LABEL = "jetty.dev/trajectory-id"
#: set on a Job's pods by the Job controller (all supported versions)
JOB_NAME_LABEL = "job-name"
CONTAINER = "agent"
RUN_CONFIG_DIR = "/run/jetty"
RUN_CONFIG_FILE = "run.json"
TERMINATION_LOG = "/dev/termination-log"
PODENTRY = "/opt/jetty/podentry.py"
UID = 1000

_LABEL_VALUE = re.compile(r"[^A-Za-z0-9_.-]+")
_NAME = re.compile(r"[^a-z0-9-]+")
#: ids that map one-to-one onto a name (``tr_…``: ``_`` becomes ``-``)
_PLAIN_ID = re.compile(r"[a-z0-9]+(_[a-z0-9]+)*")


def label_value(value: str) -> str:
    """``value`` as a valid label value (63 characters, alphanumeric at both ends);
    a value that had to be cut keeps a hash of the whole so it stays unique."""
    clean = _LABEL_VALUE.sub("-", value).strip("-_.")
    if len(clean) > 63:
        digest = hashlib.sha256(value.encode()).hexdigest()[:10]
        clean = clean[:52].rstrip("-_.") + "-" + digest
    return clean


def job_name(trajectory_id: str) -> str:
    """A DNS-1123 label for the run's Job (``jetty-run-tr-…``), unique per trajectory."""
    clean = _NAME.sub("-", trajectory_id.lower()).strip("-")
    name = f"jetty-run-{clean}"
    if len(name) > 52 or not _PLAIN_ID.fullmatch(trajectory_id):
        # Room for the Job controller's pod suffix; a hash keeps distinct ids distinct.
        digest = hashlib.sha256(trajectory_id.encode()).hexdigest()[:10]
        name = f"jetty-run-{clean[:30].strip('-')}-{digest}"
    return name


def secret_name(job: str) -> str:
    return f"{job}-run"


def sandbox_labels(
    trajectory_id: str, collection: str, task: str, extra: dict[str, str] | None = None
) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/name": "jetty-sandbox",
        "app.kubernetes.io/component": "sandbox",
        "app.kubernetes.io/part-of": "jetty",
        "app.kubernetes.io/managed-by": "jetty-runner",
        ROLE_LABEL: ROLE_SANDBOX,
        TRAJECTORY_LABEL: label_value(trajectory_id),
        "jetty.dev/collection": label_value(collection),
        "jetty.dev/task": label_value(task),
    }
    for key, value in (extra or {}).items():
        labels[f"jetty.dev/{_NAME.sub('-', key.lower()).strip('-')[:50]}"] = label_value(value)
    return {k: v for k, v in labels.items() if v}


@dataclass(frozen=True, slots=True)
class JobParams:
    name: str
    namespace: str
    image: str
    trajectory_id: str
    collection: str
    task: str
    secret: str
    active_deadline_s: int
    ttl_after_finished_s: int
    service_account: str
    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str
    workspace: str = "/workspace"
    home: str = "/home/agent"
    workspace_size: str = "4Gi"
    home_size: str = "1Gi"
    tmp_size: str = "1Gi"
    ephemeral_storage_limit: str | None = None
    runtime_class: str | None = None
    image_pull_policy: str = "IfNotPresent"
    host_network: bool = False
    extra_labels: dict[str, str] = field(default_factory=dict)


def _container_security() -> Manifest:
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def render_job(p: JobParams) -> Manifest:
    labels = sandbox_labels(p.trajectory_id, p.collection, p.task, p.extra_labels)
    annotations = {
        TRAJECTORY_LABEL: p.trajectory_id,
        "jetty.dev/collection": p.collection,
        "jetty.dev/task": p.task,
    }
    limits = {"cpu": p.cpu_limit, "memory": p.memory_limit}
    if p.ephemeral_storage_limit:
        limits["ephemeral-storage"] = p.ephemeral_storage_limit
    container: Manifest = {
        "name": CONTAINER,
        "image": p.image,
        "imagePullPolicy": p.image_pull_policy,
        # tini reaps the agent's orphans (podentry is not PID 1); -I: no PYTHON* env.
        "command": ["/usr/bin/tini", "--", "python3", "-I", PODENTRY],
        "env": [
            {"name": "JETTY_POD_CONFIG", "value": f"{RUN_CONFIG_DIR}/{RUN_CONFIG_FILE}"},
            {"name": "JETTY_POD_WORKSPACE", "value": p.workspace},
            {"name": "JETTY_POD_HOME", "value": p.home},
            {"name": "JETTY_POD_TMP", "value": "/tmp"},
            {"name": "JETTY_POD_TERMINATION_LOG", "value": TERMINATION_LOG},
        ],
        "workingDir": p.workspace,
        "resources": {
            "requests": {"cpu": p.cpu_request, "memory": p.memory_request},
            "limits": limits,
        },
        "securityContext": _container_security(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "File",
        "volumeMounts": [
            {"name": "workspace", "mountPath": p.workspace},
            {"name": "home", "mountPath": p.home},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "run-config", "mountPath": RUN_CONFIG_DIR, "readOnly": True},
        ],
    }
    pod_spec: Manifest = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "serviceAccountName": p.service_account,
        "enableServiceLinks": False,
        "hostNetwork": p.host_network,
        "hostPID": False,
        "hostIPC": False,
        "terminationGracePeriodSeconds": 10,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "fsGroup": UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "workspace", "emptyDir": {"sizeLimit": p.workspace_size}},
            {"name": "home", "emptyDir": {"sizeLimit": p.home_size}},
            {"name": "tmp", "emptyDir": {"sizeLimit": p.tmp_size}},
            {
                "name": "run-config",
                # 0440 with fsGroup: readable by the agent's group, by nobody else.
                "secret": {"secretName": p.secret, "defaultMode": 0o440},
            },
        ],
    }
    if p.runtime_class:
        pod_spec["runtimeClassName"] = p.runtime_class
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": p.name,
            "namespace": p.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {
            "backoffLimit": 0,
            "completions": 1,
            "parallelism": 1,
            "activeDeadlineSeconds": p.active_deadline_s,
            "ttlSecondsAfterFinished": p.ttl_after_finished_s,
            "template": {
                "metadata": {"labels": labels, "annotations": annotations},
                "spec": pod_spec,
            },
        },
    }


def render_run_secret(
    name: str, namespace: str, labels: dict[str, str], config_b64: str
) -> Manifest:
    """The per-run Secret (``run.json``: command, token, presigned URLs); the
    backend makes the Job its owner so it goes when the Job goes."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "type": "Opaque",
        "immutable": True,
        "data": {RUN_CONFIG_FILE: config_b64},
    }


def owner_reference(job: str, uid: str) -> Manifest:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": job,
        "uid": uid,
        "controller": False,
        "blockOwnerDeletion": False,
    }


@dataclass(frozen=True, slots=True)
class NetworkPolicyParams:
    namespace: str = "jetty"
    name: str = "jetty-sandbox-egress"
    gateway_labels: dict[str, str] = field(
        default_factory=lambda: {"app.kubernetes.io/name": "jetty-gateway"}
    )
    gateway_port: int = 8080
    #: the in-cluster object store the presigned URLs point at
    object_store_labels: dict[str, str] | None = field(
        default_factory=lambda: {"app.kubernetes.io/name": "minio"}
    )
    object_store_port: int = 9000
    #: an object store outside the cluster instead (``203.0.113.0/24``)
    object_store_cidr: str | None = None
    dns_namespace: str = "kube-system"
    dns_labels: dict[str, str] = field(default_factory=lambda: {"k8s-app": "kube-dns"})


def render_network_policy(p: NetworkPolicyParams) -> Manifest:
    """Sandbox pods: no ingress; egress to the gateway's port, DNS, and the object
    store's port (the presigned URLs carry a signature, no credentials)."""
    egress: list[Manifest] = [
        {
            "to": [{"podSelector": {"matchLabels": dict(p.gateway_labels)}}],
            "ports": [{"protocol": "TCP", "port": p.gateway_port}],
        },
        {
            "to": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": p.dns_namespace}
                    },
                    "podSelector": {"matchLabels": dict(p.dns_labels)},
                }
            ],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        },
    ]
    store_peers: list[Manifest] = []
    if p.object_store_labels:
        store_peers.append({"podSelector": {"matchLabels": dict(p.object_store_labels)}})
    if p.object_store_cidr:
        store_peers.append({"ipBlock": {"cidr": p.object_store_cidr}})
    if store_peers:
        egress.append(
            {"to": store_peers, "ports": [{"protocol": "TCP", "port": p.object_store_port}]}
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": p.name,
            "namespace": p.namespace,
            "labels": {"app.kubernetes.io/part-of": "jetty"},
        },
        "spec": {
            "podSelector": {"matchLabels": {ROLE_LABEL: ROLE_SANDBOX}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": egress,
        },
    }
