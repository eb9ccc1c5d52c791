"""Runbooks as real Kubernetes Jobs: the stack on the host with
``JETTY_RUNNER_BACKEND=kubernetes`` pointed at the session's local cluster
(tests/k8s_support.py), the runner holding only the ``jetty-runner``
ServiceAccount's token and RBAC from deploy/k8s/base/rbac.yaml, the sandbox image
built by ``make images``, the agent's model calls answered by the scripted fake.

Pods use ``hostNetwork`` (the local cluster has no pod network): they reach the
gateway and the object store on the host's loopback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from jetty_cli.testing import StackFactory, TestStack, call
from services.runner.sandbox import k8s_manifests
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.anthropic_upstream import Script as AnthropicScript
from tests.fakes.scenario_claude_code import ReadSummarizeWrite
from tests.k8s_support import NAMESPACE, Cluster, job_pods
from tests.runbook_support import (
    AGENTS,
    ANTHROPIC_KEY,
    WORKSPACE,
    csv_for,
    download_url,
    get_trajectory,
    jetty_body,
    start_run,
    stream_run,
    upload_file,
    wait_ended,
    wait_running,
    wait_until,
)

pytestmark = pytest.mark.timeout(600)
CLAUDE = AGENTS[0]


@pytest.fixture(scope="module")
async def anthropic() -> AsyncIterator[FakeAnthropic]:
    fake = FakeAnthropic(ANTHROPIC_KEY)
    await fake.start()
    yield fake
    await fake.stop()


def k8s_env(cluster: Cluster, **more: str) -> dict[str, str]:
    return {
        "JETTY_RUNNER_BACKEND": "kubernetes",
        "JETTY_K8S_KUBECONFIG": str(cluster.runner_kubeconfig),
        "JETTY_K8S_NAMESPACE": NAMESPACE,
        "JETTY_K8S_SANDBOX_IMAGE": cluster.images.sandbox,
        "JETTY_K8S_IMAGE_PULL_POLICY": "Never",
        "JETTY_K8S_HOST_NETWORK": "true",
        "JETTY_K8S_CPU_REQUEST": "100m",
        "JETTY_K8S_MEMORY_REQUEST": "128Mi",
        "JETTY_K8S_WATCH_TIMEOUT_S": "10",
        **more,
    }


@pytest.fixture(scope="module")
def k8s_stack(
    stack_factory: StackFactory, k8s_cluster: Cluster, anthropic: FakeAnthropic
) -> Iterator[TestStack]:
    stack = stack_factory(
        env={
            "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
            "ANTHROPIC_BASE_URL": anthropic.base_url,
            "JETTY_RUNNER_ACK_WAIT": "3",
            "JETTY_RUNNER_CONCURRENCY": "2",
            "JETTY_RUNBOOK_KEEPALIVE": "1",
            # The deadline is the run's timeout: a timeout ends by the Job's
            # activeDeadlineSeconds (its margin covers image pulls; none here).
            "JETTY_K8S_DEADLINE_MARGIN_S": "0",
            **k8s_env(k8s_cluster),
        }
    )
    yield stack
    stack.close()


@pytest.fixture
def fake(anthropic: FakeAnthropic) -> FakeAnthropic:
    anthropic.reset()
    return anthropic


def _batch(cluster: Cluster) -> k8s.BatchV1Api:
    return k8s.BatchV1Api(cluster.api())


def _job_of(trajectory_id: str) -> str:
    return k8s_manifests.job_name(trajectory_id)


async def _gone(cluster: Cluster, trajectory_id: str, timeout: float = 180) -> bool:
    """The run's Job, its pod and its Secret are all gone (a pod's deletion waits
    for the kubelet, slow on a busy machine: the bound is generous)."""
    api = cluster.api()
    job = _job_of(trajectory_id)

    def check() -> bool:
        core = k8s.CoreV1Api(api)
        try:
            core.read_namespaced_secret(k8s_manifests.secret_name(job), NAMESPACE)
            return False
        except ApiException as exc:
            if exc.status != 404:
                raise
        jobs = _batch(cluster).list_namespaced_job(NAMESPACE, field_selector=f"metadata.name={job}")
        return not jobs.items and not job_pods(api, job)

    return bool(await wait_until(check, timeout))


async def test_a_claude_code_runbook_runs_as_a_job(
    k8s_stack: TestStack, k8s_cluster: Cluster, fake: FakeAnthropic
) -> None:
    data, expected = csv_for(CLAUDE)
    path = await upload_file(k8s_stack, data)
    fake.respond_with(CLAUDE.model, ReadSummarizeWrite(WORKSPACE))
    seen_pods: list[Any] = []

    async def watch_pods() -> None:
        api = k8s_cluster.api()
        while True:
            pods = await asyncio.to_thread(
                k8s.CoreV1Api(api).list_namespaced_pod,
                NAMESPACE,
                label_selector=k8s_manifests.JOB_NAME_LABEL,
            )
            seen_pods.extend(pods.items)
            await asyncio.sleep(0.5)

    watcher = asyncio.create_task(watch_pods())
    try:
        progress = await stream_run(k8s_stack, CLAUDE, jetty_body(CLAUDE, "k8s-summary", [path]))
    finally:
        watcher.cancel()
    final = progress.last
    assert final is not None
    assert final["status"] == "completed", (final["error"], k8s_stack.log_tails(("runner",)))
    # It ran in a pod of the run's Job, on the node, as uid 1000 from our image.
    job = _job_of(final["trajectory_id"])
    pods = [p for p in seen_pods if p.metadata.labels.get("job-name") == job]
    assert pods, "no pod of the run's Job was seen"
    pod = pods[-1]
    assert pod.spec.node_name == "localhost"
    assert pod.spec.containers[0].image == k8s_cluster.images.sandbox
    assert pod.spec.security_context.run_as_user == 1000
    assert pod.spec.automount_service_account_token is False

    artifacts = {a["path"]: a for a in final["artifacts"]}
    assert "results/summary.md" in artifacts, artifacts
    status, content = await download_url(k8s_stack, artifacts["results/summary.md"]["url"])
    assert status == 200 and content.decode().strip() == expected.strip()
    view = get_trajectory(k8s_stack, final["trajectory_id"])
    assert view["status"] == "completed"
    completions = [s for s in view["steps"] if s["kind"] == "completion"]
    assert len(completions) == len(fake.requests) >= 3
    assert {"tool_call", "tool_result"} <= {s["kind"] for s in view["steps"]}
    # The Job, its pod and the per-run Secret go when the run ends.
    assert await _gone(k8s_cluster, final["trajectory_id"])


async def test_cancel_deletes_the_job_and_its_pod(
    k8s_stack: TestStack, k8s_cluster: Cluster, fake: FakeAnthropic
) -> None:
    fake.script(CLAUDE.model, AnthropicScript(first_byte_delay=120))
    trajectory_id = await start_run(k8s_stack, CLAUDE)
    await wait_running(k8s_stack, trajectory_id)
    job = _job_of(trajectory_id)
    assert await wait_until(lambda: job_pods(k8s_cluster.api(), job), 60), "no pod"
    url = k8s_stack.base_url + f"/api/v1/trajectories/{trajectory_id}/cancel"
    status, _, answer = await asyncio.to_thread(call, url, k8s_stack.token, {})
    assert (status, answer["status"]) == (200, "cancelled")
    view = await wait_ended(k8s_stack, trajectory_id)
    assert view["status"] == "cancelled"
    assert await _gone(k8s_cluster, trajectory_id), "the Job's pod outlived the cancel"


async def test_a_timeout_ends_through_the_jobs_deadline(
    k8s_stack: TestStack, k8s_cluster: Cluster, fake: FakeAnthropic
) -> None:
    fake.script(CLAUDE.model, AnthropicScript(first_byte_delay=120))
    trajectory_id = await start_run(k8s_stack, CLAUDE, timeout_s=8)
    job = _job_of(trajectory_id)
    assert await wait_until(lambda: job_pods(k8s_cluster.api(), job), 60), "no pod"
    created = _batch(k8s_cluster).read_namespaced_job(job, NAMESPACE)
    assert created.spec.active_deadline_seconds == 8
    reasons: list[str] = []

    def deadline_exceeded() -> bool:
        try:
            status = _batch(k8s_cluster).read_namespaced_job(job, NAMESPACE).status
        except ApiException:
            return False
        reasons.extend(c.reason for c in status.conditions or [] if c.type == "Failed")
        return "DeadlineExceeded" in reasons

    assert await wait_until(deadline_exceeded, 60), "Kubernetes never ended the Job"
    view = await wait_ended(k8s_stack, trajectory_id)
    assert view["status"] == "failed"
    assert view["error"]["code"] == "timeout"
    assert await _gone(k8s_cluster, trajectory_id)


async def test_a_failing_agent_fails_the_run(k8s_stack: TestStack, fake: FakeAnthropic) -> None:
    fake.script(
        CLAUDE.model,
        AnthropicScript(status=400, error_type="invalid_request_error", error_message="bad"),
    )
    view = await wait_ended(k8s_stack, await start_run(k8s_stack, CLAUDE), timeout=120)
    assert view["status"] == "failed"
    assert view["error"]["code"] == "agent_failed"
    assert "exited with code" in view["error"]["message"]


def test_a_pod_that_cannot_start_fails_its_run_with_the_reason(
    stack_factory: StackFactory, k8s_cluster: Cluster, anthropic: FakeAnthropic
) -> None:
    stack = stack_factory(
        env={
            "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
            "ANTHROPIC_BASE_URL": anthropic.base_url,
            **k8s_env(k8s_cluster, JETTY_K8S_SANDBOX_IMAGE="localhost/jetty-sandbox:no-such-tag"),
        }
    )
    try:
        started = time.monotonic()
        trajectory_id = asyncio.run(start_run(stack, CLAUDE))
        view = asyncio.run(wait_ended(stack, trajectory_id, timeout=120))
        assert view["status"] == "failed"
        assert view["error"]["code"] == "sandbox_failed", view["error"]
        assert "ErrImageNeverPull" in view["error"]["message"]
        assert time.monotonic() - started < 120  # not the Job's deadline
        assert asyncio.run(_gone(k8s_cluster, trajectory_id))
    finally:
        stack.close()


@pytest.mark.parametrize(
    ("verb", "call_it"),
    [
        ("read secrets", lambda core, batch: core.list_namespaced_secret(NAMESPACE)),
        ("get a secret", lambda core, batch: core.read_namespaced_secret("anything", NAMESPACE)),
        ("create pods", lambda core, batch: core.create_namespaced_pod(NAMESPACE, _pod())),
        ("delete pods", lambda core, batch: core.delete_namespaced_pod("anything", NAMESPACE)),
        ("list jobs elsewhere", lambda core, batch: batch.list_namespaced_job("default")),
        ("list namespaces", lambda core, batch: core.list_namespace()),
        (
            "exec into pods",
            lambda core, batch: core.connect_get_namespaced_pod_exec("x", NAMESPACE),
        ),
    ],
)
def test_the_runners_rbac_forbids_everything_else(
    k8s_cluster: Cluster, verb: str, call_it: Any
) -> None:
    api = k8s_cluster.runner_api()
    core, batch = k8s.CoreV1Api(api), k8s.BatchV1Api(api)
    assert batch.list_namespaced_job(NAMESPACE) is not None  # what it may do, it can
    with pytest.raises(ApiException) as caught:
        call_it(core, batch)
    assert caught.value.status == 403, f"{verb}: {caught.value.status} {caught.value.reason}"


def _pod() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "not-allowed"},
        "spec": {"containers": [{"name": "c", "image": "localhost/none:1"}]},
    }
