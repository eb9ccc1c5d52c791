"""The whole platform inside the session's local cluster (tests/k8s_support.py):
``deploy/k8s/overlays/local`` rendered and applied by ``jetty_cli.localkube.platform``
— NATS, PostgreSQL and the S3 store from the jetty-data image, gateway, proxy,
recorder, runner and webhooks from the jetty image, every pod Ready. Then a
passthrough call through the in-cluster gateway with the official SDK, answered
by the fake upstream on loopback and recorded; and a claude-code runbook that the
in-cluster runner runs as a Job (its ServiceAccount token, the API server on
loopback), its artifact downloaded through the in-cluster gateway.

Every pod shares the node's network and binds 127.0.0.1 (the local cluster has
no kube-proxy and no CoreDNS; docs/kubernetes.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from kubernetes import client as k8s

from jetty_cli.localkube import platform
from jetty_cli.localkube.platform import SELECTOR
from jetty_cli.testing import call
from services.runner.sandbox import k8s_manifests
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.openai_upstream import FakeUpstream
from tests.fakes.scenario_claude_code import ReadSummarizeWrite
from tests.k8s_support import Cluster
from tests.runbook_support import (
    AGENTS,
    ANTHROPIC_KEY,
    WORKSPACE,
    csv_for,
    download_url,
    jetty_body,
    stream_run,
    upload_file,
)

pytestmark = pytest.mark.timeout(900)
CLAUDE = AGENTS[0]
OPENAI_KEY = "sk-upstream-in-cluster-42"


@dataclass
class InCluster:
    """What the runbook helpers need of a stack: the in-cluster gateway."""

    base_url: str
    token: str
    ready_seconds: float


@pytest.fixture(scope="module")
async def upstreams() -> AsyncIterator[tuple[FakeUpstream, FakeAnthropic]]:
    openai_fake = FakeUpstream(api_key=OPENAI_KEY)
    anthropic_fake = FakeAnthropic(ANTHROPIC_KEY)
    await openai_fake.start()
    await anthropic_fake.start()
    yield openai_fake, anthropic_fake
    await anthropic_fake.stop()
    await openai_fake.stop()


@pytest.fixture(scope="module")
def in_cluster(
    k8s_cluster: Cluster, upstreams: tuple[FakeUpstream, FakeAnthropic]
) -> Iterator[InCluster]:
    openai_fake, anthropic_fake = upstreams
    provider_env = {
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_BASE_URL": openai_fake.base_url,
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        "ANTHROPIC_BASE_URL": anthropic_fake.base_url,
    }
    try:
        token, seconds = platform.up(k8s_cluster.local, provider_env=provider_env, timeout=420)
        yield InCluster(platform.GATEWAY_URL, token, seconds)
    finally:
        platform.down(k8s_cluster.local)


def _pods(cluster: Cluster) -> dict[str, Any]:
    """The platform's pods by their app.kubernetes.io/name (of the migrations
    Job's, the one that succeeded: an attempt before PostgreSQL listened fails)."""
    pods = k8s.CoreV1Api(cluster.api()).list_namespaced_pod("jetty", label_selector=SELECTOR)
    out: dict[str, Any] = {}
    for pod in pods.items:
        name = str(pod.metadata.labels["app.kubernetes.io/name"])
        if name in out and out[name].status.phase == "Succeeded":
            continue
        out[name] = pod
    return out


async def _recorded(gateway: InCluster, trajectory_id: str, timeout: float = 60) -> dict[str, Any]:
    url = f"{gateway.base_url}/api/v1/trajectories/{trajectory_id}"
    deadline = time.monotonic() + timeout
    while True:
        status, _, view = await asyncio.to_thread(call, url, gateway.token)
        if status == 200 and isinstance(view, dict) and view.get("status") == "completed":
            return view
        assert time.monotonic() < deadline, (status, view)
        await asyncio.sleep(0.5)


def test_every_component_runs_in_the_cluster_and_is_ready(
    in_cluster: InCluster, k8s_cluster: Cluster
) -> None:
    running = _pods(k8s_cluster)
    expected = {
        "nats", "postgres", "minio", "jetty-gateway", "jetty-proxy",
        "jetty-recorder", "jetty-runner", "jetty-webhooks", "jetty-migrate",
    }  # fmt: skip
    assert expected <= set(running), sorted(running)
    for name, pod in running.items():
        spec, status = pod.spec, pod.status
        assert spec.host_network is True and spec.node_name == "localhost", name
        if name == "jetty-migrate":
            assert status.phase == "Succeeded"
            continue
        ready = {c.type: c.status for c in status.conditions}
        assert ready.get("Ready") == "True", (name, ready)
        assert spec.security_context.run_as_user == 1000, name
    # The data stores run from the jetty-data image, the services from jetty.
    images = platform.built_images()
    assert running["postgres"].spec.containers[0].image == images["jetty-data"]
    assert running["jetty-gateway"].spec.containers[0].image == images["jetty"]


async def test_a_passthrough_call_through_the_in_cluster_gateway_is_recorded(
    in_cluster: InCluster, upstreams: tuple[FakeUpstream, FakeAnthropic]
) -> None:
    openai_fake, _ = upstreams
    openai_fake.reset()
    async with openai.AsyncOpenAI(
        base_url=in_cluster.base_url + "/v1", api_key=in_cluster.token, max_retries=0
    ) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "Hello"}],
            extra_body={"jetty": {"task": "in-cluster"}},
        )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello! How can I help you today?"
    (sent,) = openai_fake.requests
    assert sent.headers["Authorization"] == f"Bearer {OPENAI_KEY}"
    assert "jetty" not in sent.body
    view = await _recorded(in_cluster, raw.headers["x-jetty-trajectory-id"])
    assert view["task"] == "in-cluster"
    (step,) = view["steps"]
    assert step["provider"] == "openai"
    assert step["response"]["upstream_id"] == completion.id


async def test_a_runbook_from_the_in_cluster_runner_runs_as_a_job(
    in_cluster: InCluster, k8s_cluster: Cluster, upstreams: tuple[FakeUpstream, FakeAnthropic]
) -> None:
    _, anthropic_fake = upstreams
    anthropic_fake.reset()
    data, expected = csv_for(CLAUDE)
    path = await upload_file(in_cluster, data)  # type: ignore[arg-type]
    anthropic_fake.respond_with(CLAUDE.model, ReadSummarizeWrite(WORKSPACE))
    jobs_seen: set[str] = set()

    async def watch_jobs() -> None:
        batch = k8s.BatchV1Api(k8s_cluster.api())
        while True:
            listing = await asyncio.to_thread(batch.list_namespaced_job, "jetty")
            jobs_seen.update(
                j.metadata.name for j in listing.items if j.metadata.name != "jetty-migrate"
            )
            await asyncio.sleep(0.5)

    watcher = asyncio.create_task(watch_jobs())
    try:
        progress = await stream_run(
            in_cluster,  # type: ignore[arg-type]
            CLAUDE,
            jetty_body(CLAUDE, "in-cluster-summary", [path]),
        )
    finally:
        watcher.cancel()
    final = progress.last
    assert final is not None
    assert final["status"] == "completed", final["error"]
    job = k8s_manifests.job_name(final["trajectory_id"])
    assert job in jobs_seen, ("the run's Job was never seen", jobs_seen)
    artifacts = {a["path"]: a for a in final["artifacts"]}
    assert "results/summary.md" in artifacts, artifacts
    status, content = await download_url(in_cluster, artifacts["results/summary.md"]["url"])  # type: ignore[arg-type]
    assert status == 200 and content.decode().strip() == expected.strip()
    view = await _recorded(in_cluster, final["trajectory_id"])
    assert {"completion", "tool_call", "tool_result"} <= {s["kind"] for s in view["steps"]}
