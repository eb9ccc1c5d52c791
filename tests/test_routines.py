"""Routines on a real stack: validation and their routes, then a fast cadence fired
by two gateway replicas at once, both killed for a while and started again — every
scheduled time must have exactly one run, none doubled, none missed, each linked
to its routine. The runs themselves fail at once (no agent is installed where
this stack's runner looks): what is under test is when and how often they start."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from jetty_cli import procs
from jetty_cli.stack import ServiceProcess
from jetty_cli.testing import StackFactory, TestStack
from services.gateway.routines.store import RoutineStore
from tests.helpers import api_request

pytestmark = pytest.mark.timeout(180)

EVERY = 2.0


def _runbook(**jetty: Any) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-6",
        "messages": [{"role": "user", "content": "Go."}],
        "jetty": {"runbook": True, **jetty},
    }


@pytest.fixture(scope="module")
def sched(stack_factory: StackFactory) -> Iterator[TestStack]:
    stack = stack_factory(
        env={
            "JETTY_ROUTINES_MIN_INTERVAL": "1",
            "JETTY_ROUTINES_TICK": "0.2",
            "JETTY_RUNNER_AGENTS_DIR": "/nonexistent-agents",
            "ANTHROPIC_API_KEY": "k",
            "ANTHROPIC_BASE_URL": "http://127.0.0.1:9",
        }
    )
    yield stack
    stack.close()


@pytest.fixture
def replica(sched: TestStack, tmp_path: Path) -> Iterator[ServiceProcess]:
    """A second gateway on the same bus: a second firing replica."""
    first = sched["gateway"]
    port = procs.free_port("127.0.0.1")
    second = ServiceProcess(
        "gateway-2", first.argv, first.env | {"JETTY_PORT": str(port)},
        tmp_path / "gateway-2.log", first.cwd,
    )  # fmt: skip
    second.start()
    deadline = time.monotonic() + 60
    while True:
        try:
            if procs.http_get(f"http://127.0.0.1:{port}/healthz", timeout=1)[0] == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, second.log_path.read_text()
        time.sleep(0.1)
    yield second
    second.stop()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "x", "cadence": "61 * * * *", "request": _runbook()}, "cadence"),
        ({"name": "x", "cadence": "every 0s", "request": _runbook()}, "cadence"),
        ({"name": "x", "cadence": "* * * *", "request": _runbook()}, "cadence"),
        ({"name": "x", "cadence": "daily", "request": {"model": "m", "messages": []}},
         "request.jetty.runbook"),
        ({"name": "x", "cadence": "daily",
          "request": _runbook(secret_params={"API_KEY": "abcdef"})},
         "request.jetty.secret_params"),
        ({"name": "x", "cadence": "daily", "request": _runbook(files=["file-" + "q" * 24])},
         "request.jetty.files"),
        ({"name": "x", "cadence": "daily", "request": _runbook(), "colour": 1}, "colour"),
    ],
)  # fmt: skip
def test_bad_routines_are_400(sched: TestStack, body: dict[str, Any], param: str) -> None:
    status, doc = api_request(sched, "POST", "/api/v1/routines", body)
    assert status == 400, doc
    assert doc["error"]["param"] == param, doc


async def test_routine_routes(sched: TestStack) -> None:
    body = {"name": "nightly", "cadence": "daily", "request": _runbook(task="nightly")}
    status, created = api_request(sched, "POST", "/api/v1/routines", body)
    assert status == 201, created
    rid = created["id"]
    assert created["cadence"] == "daily" and created["next_run_at"].endswith("00:00:00+00:00")
    assert rid in {r["id"] for r in api_request(sched, "GET", "/api/v1/routines")[1]["data"]}
    status, paused = api_request(sched, "POST", f"/api/v1/routines/{rid}/pause", {})
    assert status == 200 and paused["paused"] is True and paused["next_run_at"] is None
    status, now = api_request(sched, "POST", f"/api/v1/routines/{rid}/run", {})
    assert status == 202, now
    status, view = api_request(sched, "GET", f"/api/v1/trajectories/{now['trajectory_id']}")
    assert status == 200 and view["runbook"]["routine"] == {"routine_id": rid, "slot": None}
    status, runs = api_request(sched, "GET", f"/api/v1/routines/{rid}/runs")
    assert [r["trajectory_id"] for r in runs["data"]] == [now["trajectory_id"]]

    other = await sched.create_token("routines-other")
    assert api_request(sched, "GET", f"/api/v1/routines/{rid}", token=other)[0] == 404
    assert api_request(sched, "POST", f"/api/v1/routines/{rid}/run", {}, token=other)[0] == 404
    assert api_request(sched, "DELETE", f"/api/v1/routines/{rid}")[0] == 200
    assert api_request(sched, "GET", f"/api/v1/routines/{rid}")[0] == 404
    assert api_request(sched, "GET", "/api/v1/routines/rt_nope")[0] == 404


async def _fired_by(sched: TestStack, rid: str, slots: list[float]) -> list[str]:
    """Who claimed each slot, read key by key (a watch may report itself caught
    up before it has delivered the entries on a busy machine)."""
    nc = await nats.connect(sched.nats.url)
    try:
        kv = await nc.jetstream().key_value("jetty_routine_fires")
        by = []
        for slot in slots:
            entry = await kv.get(RoutineStore.fire_key(rid, slot))
            assert entry.value is not None
            by.append(json.loads(entry.value)["by"])
        return by
    finally:
        await nc.close()


async def test_two_replicas_fire_each_time_once_across_a_restart(
    sched: TestStack, replica: ServiceProcess
) -> None:
    body = {"name": "fast", "cadence": f"every {EVERY:g}s", "request": _runbook(task="fast")}
    status, created = api_request(sched, "POST", "/api/v1/routines", body)
    assert status == 201, created
    rid = created["id"]
    await asyncio.sleep(3 * EVERY + 0.5)

    # Both replicas down for a while: the times in between are fired on return.
    sched.kill("gateway")
    replica.kill()
    await asyncio.sleep(2 * EVERY + 1)
    replica.start()
    await sched.restart_async("gateway")
    await asyncio.sleep(3 * EVERY)

    status, paused = api_request(sched, "POST", f"/api/v1/routines/{rid}/pause", {})
    assert status == 200, paused
    await asyncio.sleep(1.0)  # a firing under way when it paused settles
    status, routine = api_request(sched, "GET", f"/api/v1/routines/{rid}")
    created_at = _epoch(routine["created_at"])
    last = _epoch(routine["last_run_at"])
    expected = [
        created_at + k * EVERY for k in range(1, math.floor((last - created_at) / EVERY) + 1)
    ]
    assert len(expected) >= 7, routine

    status, runs = api_request(sched, "GET", f"/api/v1/routines/{rid}/runs?limit=200")
    assert status == 200, runs
    slots = sorted(r["slot"] for r in runs["data"])
    assert slots == pytest.approx(expected), (slots, expected)  # each once, none missed
    ids = {r["trajectory_id"] for r in runs["data"]}
    assert len(ids) == len(slots)
    status, view = api_request(sched, "GET", f"/api/v1/trajectories/{sorted(ids)[0]}")
    assert view["runbook"]["routine"]["routine_id"] == rid
    # More than one replica took part in the firing (each is host-pid: the
    # restarted ones count apart).
    assert len(set(await _fired_by(sched, rid, slots))) >= 2


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()
