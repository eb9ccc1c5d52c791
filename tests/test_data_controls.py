"""Data controls: what a trajectory keeps of the bodies (server default and
``jetty.store: false``), deletion that survives a replay of the stream, OTLP/JSON
and JSONL export, and the retention sweeper.

Real stacks (NATS, PostgreSQL, object store and the services); the replay is the
real ``replay`` into a fresh database; the sweeper runs against a real PostgreSQL.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest

from jetty_cli.testing import StackFactory, TestStack
from services.recorder.projection import apply
from services.recorder.replay import replay
from services.recorder.retention import sweep
from shared import subjects
from shared.bus import connect
from shared.events import Envelope
from shared.events.deletion import TrajectoryDeleted
from tests.test_projection import T0, finished, requested

SECRET = "private-words-" + secrets.token_hex(6)


async def http(
    method: str, url: str, token: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, url, json=body, headers={"Authorization": f"Bearer {token}"}
        ) as response,
    ):
        return response.status, dict(response.headers), await response.read()


async def chat(stack: TestStack, text: str, **jetty: Any) -> str:
    body: dict[str, Any] = {"model": "mock/echo", "messages": [{"role": "user", "content": text}]}
    if jetty:
        body["jetty"] = jetty
    status, headers, raw = await http(
        "POST", stack.base_url + "/v1/chat/completions", stack.token, body
    )
    assert status == 200, raw
    return headers["X-Jetty-Trajectory-Id"]


async def trajectory(stack: TestStack, trajectory_id: str, query: str = "") -> tuple[int, Any]:
    status, _, raw = await http(
        "GET", f"{stack.base_url}/api/v1/trajectories/{trajectory_id}{query}", stack.token
    )
    return status, json.loads(raw)


async def stream_bodies(stack: TestStack) -> list[bytes]:
    """Every message on the events stream, raw."""
    nc = await connect(stack.nats_url, "test-stream-reader", max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        info = await js.stream_info(subjects.EVENTS_STREAM)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                out.append((await js.get_msg(subjects.EVENTS_STREAM, seq)).data or b"")
            except Exception:  # deleted
                continue
        return out
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def redacting_stack(stack_factory: StackFactory) -> TestStack:
    return stack_factory(env={"JETTY_STORE_BODIES": "redacted"})


async def test_store_false_keeps_metadata_only(stack: TestStack) -> None:
    kept = await chat(stack, "keep these words")
    dropped = await chat(stack, SECRET, store=False)
    status, full = await trajectory(stack, kept)
    assert status == 200 and full["steps"][0]["request"]["store"] == "full"
    assert full["steps"][0]["request"]["messages"][0]["content"] == "keep these words"
    status, meta = await trajectory(stack, dropped)
    step = meta["steps"][0]
    assert status == 200 and step["request"]["store"] == "none"
    assert step["request"]["messages"] == [] and step["response"]["content"] is None
    assert step["usage"]["total_tokens"] > 0 and meta["status"] == "completed"
    assert step["latency_ms"] is not None
    assert not any(SECRET.encode() in body for body in await stream_bodies(stack))


async def test_redacted_keeps_the_shape_without_the_words(redacting_stack: TestStack) -> None:
    tid = await chat(redacting_stack, SECRET)
    status, view = await trajectory(redacting_stack, tid)
    step = view["steps"][0]
    assert status == 200 and step["request"]["store"] == "redacted"
    message = step["request"]["messages"][0]
    assert message == {"role": "user", "content": f"[redacted: {len(SECRET)} chars]"}
    assert step["response"]["content"].startswith("[redacted: ")
    assert not any(SECRET.encode() in body for body in await stream_bodies(redacting_stack))


async def test_delete_removes_it_everywhere_and_a_replay_does_not_bring_it_back(
    stack: TestStack, database_url: str
) -> None:
    tid = await chat(stack, SECRET)
    keep = await chat(stack, "stays")
    assert (await trajectory(stack, tid))[0] == 200
    reader = await stack.create_token(stack.collection)  # an api key of the collection
    status, _, raw = await http("DELETE", f"{stack.base_url}/api/v1/trajectories/{tid}", reader)
    assert status == 200 and json.loads(raw) == {"id": tid, "object": "trajectory", "deleted": True}
    status, body = await trajectory(stack, tid)
    assert status == 404 and body["error"]["code"] == "not_found"
    status, _, raw = await http(
        "GET", stack.base_url + "/api/v1/trajectories?limit=200", stack.token
    )
    assert tid not in raw.decode() and keep in raw.decode()
    status, _, _ = await http("DELETE", f"{stack.base_url}/api/v1/trajectories/{tid}", stack.token)
    assert status == 404
    # Its events, bodies included, are gone from the stream; only the tombstone is left.
    bodies = [b for b in await stream_bodies(stack) if tid.encode() in b]
    assert [json.loads(b)["type"] for b in bodies] == ["trajectory.deleted"]
    # A rebuild of the projection from the stream does not bring it back.
    result = await replay(stack.nats_url, database_url)
    assert result is not None
    conn = await asyncpg.connect(database_url)
    try:
        assert (
            await conn.fetchval("SELECT count(*) FROM trajectories WHERE trajectory_id = $1", tid)
            == 0
        )
        assert (
            await conn.fetchval("SELECT count(*) FROM trajectories WHERE trajectory_id = $1", keep)
            == 1
        )
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM deleted_trajectories WHERE trajectory_id = $1", tid
            )
            == 1
        )
    finally:
        await conn.close()


def deletion_event(trajectory_id: str) -> Envelope:
    return Envelope(
        id=f"del-{trajectory_id}", type="trajectory.deleted", source="test", time=T0,
        trajectory_id=trajectory_id, collection="acme",
        data=TrajectoryDeleted(deleted_at=T0).model_dump(mode="json"),
    )  # fmt: skip


async def test_a_tombstone_wins_in_any_order(migrated_database_url: str) -> None:
    """The deletion arrives before the call's events (a replay in another order)."""
    deleted = deletion_event("tr_gone")
    conn = await asyncpg.connect(migrated_database_url)
    try:
        assert await apply([deleted], conn) == 1  # the tombstone
        # The trajectory's events, in the same batch as a redelivered deletion or
        # after it, write nothing.
        assert await apply([requested("tr_gone"), finished("tr_gone"), deleted], conn) == 0
        assert await apply([requested("tr_gone"), finished("tr_gone")], conn) == 0
        assert await conn.fetchval("SELECT count(*) FROM trajectories") == 0
        assert await conn.fetchval("SELECT count(*) FROM steps") == 0
    finally:
        await conn.close()


async def test_otlp_export_of_one_trajectory(stack: TestStack) -> None:
    tid = await chat(stack, "export me")
    status, doc = await trajectory(stack, tid, "?format=otlp")
    assert status == 200
    spans = doc["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert len(spans) == 1
    span = spans[0]
    assert span["name"] == "chat mock/echo" and span["kind"] == 3
    assert len(span["traceId"]) == 32 and len(span["spanId"]) == 16
    attrs = {a["key"]: a["value"] for a in span["attributes"]}
    assert attrs["gen_ai.operation.name"] == {"stringValue": "chat"}
    assert attrs["gen_ai.provider.name"] == {"stringValue": "mock"}
    assert attrs["jetty.trajectory_id"] == {"stringValue": tid}
    assert int(attrs["gen_ai.usage.input_tokens"]["intValue"]) > 0
    assert "export me" in attrs["gen_ai.input.messages"]["stringValue"]
    assert int(span["endTimeUnixNano"]) >= int(span["startTimeUnixNano"])
    status, again = await trajectory(stack, tid, "?format=otlp")
    assert again == doc  # stable ids: an importer de-duplicates
    status, body = await trajectory(stack, tid, "?format=xml")
    assert status == 400 and body["error"]["param"] == "format"


async def test_jsonl_export_of_a_filtered_list(stack: TestStack) -> None:
    task = "export-" + secrets.token_hex(3)
    ids = {await chat(stack, f"line {i}", task=task) for i in range(3)}
    await trajectory(stack, next(iter(ids)))  # read-your-writes
    url = f"{stack.base_url}/api/v1/export/trajectories?format=jsonl&task={task}"
    deadline = time.monotonic() + 10
    while True:
        status, headers, raw = await http("GET", url, stack.token)
        lines = [json.loads(line) for line in raw.splitlines()]
        if len(lines) == 3 or time.monotonic() > deadline:
            break
    assert status == 200 and headers["Content-Type"].startswith("application/x-ndjson")
    assert {line["trajectory_id"] for line in lines} == ids
    assert all(line["steps"][0]["request"]["messages"] for line in lines)
    status, _, raw = await http("GET", url.replace("jsonl", "otlp"), stack.token)
    spans = json.loads(raw)["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert status == 200 and len(spans) == 3


@pytest.fixture
async def conn(migrated_database_url: str) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    connection = await asyncpg.connect(migrated_database_url)
    try:
        yield connection
    finally:
        await connection.close()


async def test_the_sweeper_deletes_what_is_older_than_the_cutoff_in_batches(
    conn: asyncpg.Connection[asyncpg.Record], migrated_database_url: str
) -> None:
    old = [f"tr_old{i}" for i in range(5)]
    events = []
    for i, tid in enumerate(old):
        events += [
            requested(tid, at=T0 + timedelta(minutes=i)),
            finished(tid, at=T0 + timedelta(minutes=i)),
        ]
    events += [
        requested("tr_new", at=T0 + timedelta(days=30)),
        finished("tr_new", at=T0 + timedelta(days=30)),
    ]
    await apply(events, conn)
    pool = await asyncpg.create_pool(migrated_database_url, min_size=1, max_size=2)
    try:
        result = await sweep(pool, T0 + timedelta(days=1), batch=2)
    finally:
        await pool.close()
    assert (result.trajectories, result.batches) == (5, 3)
    left = [r["trajectory_id"] for r in await conn.fetch("SELECT trajectory_id FROM trajectories")]
    assert left == ["tr_new"]
    assert await conn.fetchval("SELECT count(*) FROM steps WHERE trajectory_id LIKE 'tr_old%'") == 0
    assert (
        await conn.fetchval("SELECT count(*) FROM trajectories WHERE trajectory_id LIKE 'tr_old%'")
        == 0
    )
