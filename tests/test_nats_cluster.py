"""The engine on a three-node NATS JetStream cluster (R3 streams and buckets):
three real nats-server processes on loopback under a whole stack. While calls
and a runbook run, the events stream's leader is SIGKILLed and later brought
back (then, the same for the node the gateway is connected to). Every call the
gateway accepted must be a trajectory exactly once, the runbook completes, and
no client hangs: a call either succeeds, is refused with a 503, or (in flight
on the connection that died) ends with a 504 once its reply cannot come.

The seconds of 503s and the calls lost are measured by ``make bench``
(bench/nats_cluster.py), not asserted here beyond "none lost".
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import nats
import pytest

from jetty_cli.natscluster import ClusterNode, NatsCluster, start_cluster
from jetty_cli.testing import StackFactory, TestStack
from shared import subjects
from shared.bus import ensure_streams
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.scenario_claude_code import ReadSummarizeWrite
from tests.runbook_support import (
    AGENTS,
    ANTHROPIC_KEY,
    WORKSPACE,
    csv_for,
    jetty_body,
    stream_run,
    upload_file,
)
from tests.test_resilience import _chat, _projected

pytestmark = pytest.mark.timeout(420)
CLAUDE = AGENTS[0]


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    cluster = start_cluster(tmp_path)
    try:
        # The R3 streams and buckets, made once up front as a deployment's
        # bootstrap step would (four services racing to create R3 assets can
        # time out).
        asyncio.run(_create_streams(cluster.url))
        yield cluster
    finally:
        cluster.stop()


async def _create_streams(url: str, attempts: int = 3) -> None:
    nc = await nats.connect(url.split(","))
    try:
        # A freshly elected meta leader can leave the first JetStream API request
        # unanswered on a busy machine; a bootstrap step retries, a bounded number
        # of times.
        for attempt in range(1, attempts + 1):
            try:
                await ensure_streams(nc.jetstream(timeout=30), replicas=3)
                return
            except nats.errors.TimeoutError:
                if attempt == attempts:
                    raise
    finally:
        await nc.close()


@pytest.fixture
async def anthropic() -> AsyncIterator[FakeAnthropic]:
    fake = FakeAnthropic(ANTHROPIC_KEY)
    await fake.start()
    yield fake
    await fake.stop()


@dataclass
class Load:
    accepted: list[str] = field(default_factory=list)
    refused: list[float] = field(default_factory=list)  # when each 503/504 was answered
    slowest: float = 0.0
    other: list[int] = field(default_factory=list)


async def _calls(stack: TestStack, stop: asyncio.Event, load: Load, workers: int = 8) -> None:
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def worker(w: int) -> None:
            i = 0
            while not stop.is_set():
                started = time.monotonic()
                status, trajectory_id = await _chat(session, stack, f"w{w}-{i}")
                load.slowest = max(load.slowest, time.monotonic() - started)
                if status == 200:
                    load.accepted.append(trajectory_id)
                elif status in (503, 504):
                    # 503: refused at once (no bus); 504: in flight on the lost
                    # connection, answered when the proxy's reply never came.
                    load.refused.append(time.monotonic())
                    await asyncio.sleep(0.05)
                else:
                    load.other.append(status)
                i += 1

        await asyncio.gather(*(worker(w) for w in range(workers)))


async def _stream_leader(cluster: NatsCluster) -> str:
    nc = await nats.connect(cluster.url.split(","))
    try:
        info = await nc.jetstream().stream_info(subjects.EVENTS_STREAM)
        assert info.config.num_replicas == 3
        assert info.cluster is not None and info.cluster.leader
        return str(info.cluster.leader)
    finally:
        await nc.close()


def _gateway_node(cluster: NatsCluster) -> ClusterNode:
    """The node holding the gateway's NATS connection (from each node's /connz)."""
    for node in cluster.nodes:
        with urllib.request.urlopen(node.monitor_url + "/connz", timeout=2) as resp:
            conns = json.loads(resp.read()).get("connections") or []
        if any(str(c.get("name", "")).startswith("gateway") for c in conns):
            return node
    raise AssertionError("no node holds the gateway's connection")


@pytest.mark.parametrize("victim", ["stream leader", "gateway's node"])
async def test_a_nats_node_killed_under_load_loses_nothing(
    stack_factory: StackFactory,
    nats_cluster: NatsCluster,
    anthropic: FakeAnthropic,
    victim: str,
) -> None:
    stack = stack_factory(
        nats=nats_cluster.nodes[0],
        nats_url=nats_cluster.url,
        nats_monitor_url=nats_cluster.monitor_url,
        env={
            "JETTY_STREAM_REPLICAS": "3",
            "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
            "ANTHROPIC_BASE_URL": anthropic.base_url,
        },
    )
    try:
        data, expected = csv_for(CLAUDE)
        path = await upload_file(stack, data)
        anthropic.respond_with(CLAUDE.model, ReadSummarizeWrite(WORKSPACE))
        stop = asyncio.Event()
        load = Load()
        calls = asyncio.create_task(_calls(stack, stop, load))
        runbook = asyncio.create_task(
            stream_run(stack, CLAUDE, jetty_body(CLAUDE, "through-a-failover", [path]))
        )
        await asyncio.sleep(2)
        if victim == "stream leader":
            node = nats_cluster.by_name(await _stream_leader(nats_cluster))
        else:
            node = await asyncio.to_thread(_gateway_node, nats_cluster)
        before = len(load.accepted)
        node.kill()
        await asyncio.sleep(6)
        await asyncio.to_thread(node.start)
        # Calls go on until some succeed again after the node is back (how long
        # that takes is measured by `make bench-k8s`, not asserted).
        back = len(load.accepted)
        deadline = time.monotonic() + 90
        while len(load.accepted) < back + 20 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        stop.set()
        await asyncio.wait_for(calls, 60)
        progress = await asyncio.wait_for(runbook, 240)

        assert load.other == [], load.other
        assert len(load.accepted) >= back + 20 > before, "calls did not succeed again"
        assert load.slowest < 30, "a client hung"
        assert len(set(load.accepted)) == len(load.accepted)
        await _projected(stack, load.accepted, timeout=120)
        final = progress.last
        assert final is not None and final["status"] == "completed", final
        artifacts = {a["path"] for a in final["artifacts"]}
        assert "results/summary.md" in artifacts
        assert expected  # the scenario wrote the summary of the CSV it read
    finally:
        stack.close()
