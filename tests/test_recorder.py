"""The recorder end to end on a real NATS JetStream and a real PostgreSQL: events
published the way the proxy publishes them, projected by the live consumer,
surviving Postgres outages and poison messages, and rebuilt by replay."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import BaseModel

from jetty_cli.embedded import EmbeddedNats, EmbeddedPostgres
from jetty_cli.testing import hermetic_env
from services.recorder import projection
from services.recorder import replay as replay_cli
from services.recorder.consumer import Recorder
from services.recorder.replay import replay
from services.recorder.settings import RecorderSettings
from shared import subjects
from shared.bus import ClaimStore, EventPublisher, connect, encode_event, ensure_streams
from shared.db.pool import create_pool
from shared.events import Envelope, parse_data, type_name
from shared.events.completion import (
    CompletionCancelled,
    CompletionFailed,
    CompletionFinished,
    CompletionRequested,
    ErrorRecord,
    ResponseRecord,
    Usage,
)
from shared.events.registry import decode_envelope, parse_data_json

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
TABLES = {
    "trajectories": "trajectory_id",
    "steps": "trajectory_id, step_index",
    "dead_events": "stream_seq",
}
# Payloads past this size go by claim check in these tests (production: 256 KiB).
CLAIM_THRESHOLD = 2048
BIG = "x" * 10_000


# --- payloads, published like the proxy does ----------------------------------


def req(i: int, content: str = "hi") -> CompletionRequested:
    return CompletionRequested(
        task=f"task{i % 3}",
        model="mock/echo",
        provider="mock",
        stream=bool(i % 2),
        request={"model": "mock/echo", "messages": [{"role": "user", "content": content}]},
        received_at=T0 + timedelta(milliseconds=i),
    )


def _end(i: int) -> dict[str, Any]:
    return {
        "task": f"task{i % 3}",
        "model": "mock/echo",
        "provider": "mock",
        "response": ResponseRecord(content=f"echo {i}", finish_reason="stop", upstream_id=f"u{i}"),
        "usage": Usage(prompt_tokens=3, completion_tokens=i, total_tokens=3 + i),
        "latency_ms": 1.5,
        "ttft_ms": 0.5,
        "received_at": T0 + timedelta(milliseconds=i),
        "ended_at": T0 + timedelta(milliseconds=i + 2),
    }


def end(i: int, request: CompletionRequested | None = None) -> BaseModel:
    """Mostly finished; some failed and cancelled. With ``request``, the end event of
    a quick call, carrying the request side itself."""
    fields = _end(i)
    if request is not None:
        fields |= {"request": request.request, "stream": request.stream, "ingress": "chat"}
    if i % 10 == 7:
        return CompletionFailed(**fields, error=ErrorRecord(status=502, type="x", message="boom"))
    if i % 10 == 9:
        return CompletionCancelled(**fields)
    return CompletionFinished(**fields)


def tid(i: int) -> str:
    return f"tr_{i:06d}"


def quick(i: int) -> bool:
    """Every fourth call ends before the proxy's requested delay: one event."""
    return i % 4 == 0


def event_count(ids: range) -> int:
    return sum(1 if quick(i) else 2 for i in ids)


async def publish_trajectories(publisher: EventPublisher, ids: range) -> None:
    """Two events per trajectory, every third in reverse order, except every fourth:
    one end event carrying the request; every fifth request too big to travel inline
    (claim check)."""
    for i in ids:
        first = req(i, BIG if i % 5 == 0 else "hi")
        both = [first, end(i)] if i % 3 else [end(i), first]
        events = [end(i, first)] if quick(i) else both
        for data in events:
            await publisher.publish("acme", tid(i), data, wait=False)
    await publisher.flush(timeout=30)


# --- fixtures -------------------------------------------------------------------


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[tuple[NATS, JetStreamContext]]:
    """A connection to the session NATS with an empty events stream (streams and
    durable consumers are global to the server, so each test starts afresh)."""
    nc = await connect(nats_url, name="test-recorder")
    js = nc.jetstream(timeout=10)
    with contextlib.suppress(NotFoundError):
        await js.delete_stream(subjects.EVENTS_STREAM)
    await ensure_streams(js)
    try:
        yield nc, js
    finally:
        await nc.drain()


@pytest.fixture
def publisher(bus: tuple[NATS, JetStreamContext]) -> EventPublisher:
    nc, js = bus
    return EventPublisher(nc, js, "test/publisher", claim_threshold=CLAIM_THRESHOLD)


def settings_for(nats_url: str, database_url: str) -> RecorderSettings:
    return RecorderSettings(
        nats_url=nats_url,
        database_url=database_url,
        recorder_batch_size=100,
        recorder_retry_initial=0.05,
        recorder_retry_max=0.5,
        recorder_db_connect_timeout=2.0,
        recorder_db_acquire_timeout=3.0,
    )


@contextlib.asynccontextmanager
async def running_recorder(
    js: JetStreamContext, settings: RecorderSettings
) -> AsyncIterator[Recorder]:
    pool = await create_pool(
        settings.database_url,
        max_size=2,
        connect_timeout=2.0,
        server_settings=projection.SERVER_SETTINGS,
    )
    recorder = Recorder(js, pool, settings)
    task = asyncio.create_task(recorder.run())
    try:
        yield recorder
    finally:
        recorder.stop()
        await asyncio.wait_for(task, 30)  # re-raises whatever ended it
        await pool.close()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    """Poll ``check`` until true (the deadline only stops a hung test)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.05)


async def scalar(dsn: str, sql: str) -> Any:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close(timeout=5)


async def tracking_position(dsn: str) -> int:
    sql = "SELECT position FROM tracking_positions WHERE consumer = '{}'"
    value: int = await scalar(dsn, sql.format(subjects.RECORDER_DURABLE))
    return value


async def count_ended(dsn: str) -> int:
    value: int = await scalar(dsn, "SELECT count(*) FROM trajectories WHERE status <> 'running'")
    return value


async def dump(dsn: str) -> dict[str, list[str]]:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        out = {}
        for table, key in TABLES.items():
            rows = await conn.fetch(f"SELECT to_jsonb(x)::text FROM {table} x ORDER BY {key}")
            out[table] = [r[0] for r in rows]
        return out
    finally:
        await conn.close(timeout=5)


async def consumer_settled(js: JetStreamContext) -> bool:
    info = await js.consumer_info(subjects.EVENTS_STREAM, subjects.RECORDER_DURABLE)
    return info.num_pending == 0 and info.num_ack_pending == 0


# --- tests ----------------------------------------------------------------------


@pytest.mark.parametrize("big", [False, True], ids=["inline", "claim-check"])
async def test_published_envelope_is_the_envelope_contract(
    bus: tuple[NATS, JetStreamContext], publisher: EventPublisher, big: bool
) -> None:
    """The publisher writes the envelope without building an ``Envelope``: what it
    writes must still validate as one, encode back to the same bytes, and decode
    in one pass (typed) to the payload that went in."""
    _, js = bus
    content = BIG if big else "hi"
    # (payload, whether it is too big to travel inline)
    cases = [(req(1, content), big), (end(2), False), (end(4, req(4, content)), big)]
    for data, claimed in cases:
        eid, encoded, subject = await publisher.build("acme", tid(1), data)
        envelope = Envelope.model_validate_json(encoded)
        assert encode_event(envelope) == encoded
        assert (envelope.id, envelope.type, envelope.source) == (
            eid,
            type_name(data),
            "test/publisher",
        )
        assert (envelope.trajectory_id, envelope.collection, envelope.v) == (tid(1), "acme", 1)
        assert subject == subjects.event_subject("acme", envelope.type)
        typed = decode_envelope(encoded)
        assert typed.model_dump(exclude={"data"}) == envelope.model_dump(exclude={"data"})
        if envelope.data_ref is None:
            assert envelope.data is not None and len(encoded) <= CLAIM_THRESHOLD
            assert typed.data == data == parse_data(envelope.type, envelope.data)
        else:
            assert envelope.data is None and typed.data is None
            raw = await ClaimStore(js).get(envelope.data_ref)
            assert parse_data_json(envelope.type, raw) == data
        assert claimed == (envelope.data_ref is not None)


async def test_publisher_waits_bounded_and_never_drops_an_event(
    bus: tuple[NATS, JetStreamContext], nats_server: EmbeddedNats
) -> None:
    """With NATS down, ``publish(wait=True)`` returns after ``ack_timeout`` and a
    cancelled caller returns at once; both events are stored once NATS is back."""
    nc, js = bus
    publisher = EventPublisher(nc, js, "test/publisher", CLAIM_THRESHOLD, ack_timeout=0.5)
    await publisher.publish("acme", tid(1), end(1), event_id="ev-up")
    assert publisher.pending == 0  # acknowledged in the caller's task: nothing left over
    await asyncio.to_thread(nats_server.stop)
    await publisher.publish("acme", tid(2), end(2), event_id="ev-waited")
    assert publisher.pending == 1
    caller = asyncio.create_task(publisher.publish("acme", tid(3), end(3), event_id="ev-cancelled"))
    await asyncio.sleep(0.1)  # past building, into delivery
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert publisher.pending == 2
    await asyncio.to_thread(nats_server.start)
    await publisher.flush(timeout=30)
    assert publisher.pending == 0
    sub = await js.subscribe(subjects.EVENTS_ALL, ordered_consumer=True)
    try:
        ids = [
            Envelope.model_validate_json((await sub.next_msg(timeout=5)).data).id for _ in range(3)
        ]
    finally:
        await sub.unsubscribe()
    assert sorted(ids) == ["ev-cancelled", "ev-up", "ev-waited"]


async def test_live_projection_with_claim_checks_and_any_order(
    bus: tuple[NATS, JetStreamContext],
    publisher: EventPublisher,
    nats_url: str,
    migrated_database_url: str,
) -> None:
    _, js = bus
    n = 300
    async with running_recorder(js, settings_for(nats_url, migrated_database_url)):
        await publish_trajectories(publisher, range(n))
        await eventually(lambda: _equals(count_ended(migrated_database_url), n))
        await eventually(lambda: consumer_settled(js))
    dsn = migrated_database_url
    assert await scalar(dsn, "SELECT count(*) FROM event_positions") == event_count(range(n))
    last_seq = (await js.stream_info(subjects.EVENTS_STREAM)).state.last_seq
    assert await tracking_position(dsn) == last_seq
    assert await scalar(dsn, "SELECT count(*) FROM steps") == n
    assert await scalar(dsn, "SELECT count(*) FROM dead_events") == 0
    # Every step has its request side, from a requested event or an end event.
    whole = "request IS NOT NULL AND stream IS NOT NULL AND ingress IS NOT NULL"
    assert await scalar(dsn, f"SELECT count(*) FROM steps WHERE {whole}") == n
    assert await scalar(dsn, "SELECT count(*) FROM steps WHERE request_event_id IS NULL") == sum(
        map(quick, range(n))
    )
    # Claim-checked requests arrived whole (0: in an end event; 5: in a requested one).
    for i in (0, 5):
        sql = "SELECT request->'messages'->0->>'content' FROM steps WHERE trajectory_id = "
        assert await scalar(dsn, f"{sql}'{tid(i)}'") == BIG
    statuses = await scalar(
        dsn, "SELECT jsonb_object_agg(status, c) FROM (SELECT status, count(*) c"
        " FROM trajectories GROUP BY status) s",
    )  # fmt: skip
    assert orjson.loads(statuses) == {"completed": 240, "failed": 30, "cancelled": 30}


async def test_poison_does_not_block(
    bus: tuple[NATS, JetStreamContext],
    publisher: EventPublisher,
    nats_url: str,
    migrated_database_url: str,
) -> None:
    _, js = bus
    subject = subjects.event_subject("acme", "completion.finished")
    good = Envelope(
        id="e-ok", type="completion.requested", source="t", time=T0,
        trajectory_id=tid(1), collection="acme", data=req(1).model_dump(mode="json"),
    )  # fmt: skip
    refused = req(2).model_dump(mode="json") | {"step_index": 2**40}  # not an int4
    poison = [
        b"\x00not json at all",
        encode_event(good.model_copy(update={"id": "e-type", "type": "completion.exploded"})),
        encode_event(good.model_copy(update={"id": "e-data", "data": {"task": 5}})),
        encode_event(
            good.model_copy(update={"id": "e-ref", "data": None, "data_ref": "event/gone"})
        ),
        encode_event(good.model_copy(update={"id": "e-db", "data": refused})),
    ]
    for i, payload in enumerate(poison):
        await js.publish(subject, payload, headers={"Nats-Msg-Id": f"poison-{i}"})
    await publish_trajectories(publisher, range(50))

    async with running_recorder(js, settings_for(nats_url, migrated_database_url)):
        await eventually(lambda: _equals(count_ended(migrated_database_url), 50))
        await eventually(lambda: consumer_settled(js))
    dsn = migrated_database_url
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        dead = await conn.fetch("SELECT * FROM dead_events ORDER BY stream_seq")
    finally:
        await conn.close(timeout=5)
    assert [d["stream_seq"] for d in dead] == [1, 2, 3, 4, 5]
    assert [d["event_id"] for d in dead] == [None, "e-type", "e-data", "e-ref", "e-db"]
    assert dead[0]["payload"] == poison[0]
    assert "undecodable" in dead[0]["error"]
    assert "unknown event type" in dead[1]["error"]
    assert "invalid completion.requested payload" in dead[2]["error"]
    assert "claim check object missing" in dead[3]["error"]
    assert "refused by the database" in dead[4]["error"]
    assert dead[4]["trajectory_id"] == tid(1)
    # The refused event left no trace but its dead letter (its position counts).
    assert await scalar(dsn, "SELECT count(*) FROM event_positions WHERE event_id LIKE 'e-%'") == 0
    assert await scalar(dsn, "SELECT count(*) FROM steps WHERE trajectory_id = 'tr_000001'") == 1
    last_seq = (await js.stream_info(subjects.EVENTS_STREAM)).state.last_seq
    assert await tracking_position(dsn) == last_seq


async def test_postgres_outage_loses_nothing(
    bus: tuple[NATS, JetStreamContext],
    publisher: EventPublisher,
    nats_url: str,
    migrated_database_url: str,
    pg_server: EmbeddedPostgres,
) -> None:
    _, js = bus
    dsn = migrated_database_url
    async with running_recorder(js, settings_for(nats_url, dsn)) as recorder:
        await publish_trajectories(publisher, range(100))
        await eventually(lambda: _equals(count_ended(dsn), 100))

        await asyncio.to_thread(pg_server.stop)
        batches = recorder.applied_batches
        await publish_trajectories(publisher, range(100, 400))
        # The events wait in JetStream while the recorder retries its batch.
        await eventually(lambda: _pending_in_stream(js, event_count(range(100, 400))))
        await asyncio.sleep(1.0)
        assert recorder.applied_batches == batches
        await asyncio.to_thread(pg_server.start)

        await eventually(lambda: _equals(count_ended(dsn), 400))
        await eventually(lambda: consumer_settled(js))
    assert await scalar(dsn, "SELECT count(*) FROM event_positions") == event_count(range(400))
    assert await scalar(dsn, "SELECT count(*) FROM steps") == 400
    assert await scalar(dsn, "SELECT count(*) FROM steps WHERE request IS NULL") == 0
    assert await scalar(dsn, "SELECT count(*) FROM dead_events") == 0


async def test_replay_rebuilds_identical_tables(
    bus: tuple[NATS, JetStreamContext],
    publisher: EventPublisher,
    nats_url: str,
    migrated_database_url: str,
    pg_server: EmbeddedPostgres,
) -> None:
    _, js = bus
    live = migrated_database_url
    await js.publish(
        subjects.event_subject("acme", "completion.finished"),
        b"garbage",
        headers={"Nats-Msg-Id": "garbage"},
    )
    async with running_recorder(js, settings_for(nats_url, live)):
        await publish_trajectories(publisher, range(250))
        # The same events again under new ids would be new facts; the same ids are
        # JetStream duplicates. Redeliveries are covered by the outage test.
        await eventually(lambda: _equals(count_ended(live), 250))
        await eventually(lambda: consumer_settled(js))

    rebuilt = pg_server.create_database("replay_" + os.urandom(4).hex())
    try:
        result = await replay(nats_url, rebuilt, batch_size=64)
        assert result.dead == 1 and result.messages == event_count(range(250)) + 1
        assert await dump(rebuilt) == await dump(live)
        # Replaying again over the rebuilt tables changes nothing.
        await replay(nats_url, rebuilt)
        assert await dump(rebuilt) == await dump(live)
    finally:
        pg_server.drop_database(rebuilt.rsplit("/", 1)[1])


async def test_replay_cli_and_empty_stream(
    bus: tuple[NATS, JetStreamContext],
    publisher: EventPublisher,
    nats_url: str,
    database_url: str,
) -> None:
    result = await replay(nats_url, database_url)
    assert result.messages == 0
    await publish_trajectories(publisher, range(20))
    argv = ["--database-url", database_url, "--nats-url", nats_url, "--batch-size", "7"]
    code = await asyncio.to_thread(replay_cli.main, argv)
    assert code == 0
    assert await count_ended(database_url) == 20


async def test_service_process_drains_on_sigterm(
    bus: tuple[NATS, JetStreamContext],
    publisher: EventPublisher,
    nats_url: str,
    database_url: str,
) -> None:
    """``python -m services.recorder`` migrates an empty database, consumes, and
    exits 0 on SIGTERM with everything acknowledged."""
    _, js = bus
    env = hermetic_env() | {
        "JETTY_NATS_URL": nats_url,
        "JETTY_DATABASE_URL": database_url,
        "JETTY_LOG_LEVEL": "INFO",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.recorder",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        await publish_trajectories(publisher, range(120))
        await eventually(lambda: _equals(_ended_or_zero(database_url), 120))
        await eventually(lambda: consumer_settled(js))
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, out.decode()
    assert b"recorder stopped" in out


# --- small helpers --------------------------------------------------------------


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def _ended_or_zero(dsn: str) -> int:
    try:
        return await count_ended(dsn)
    except asyncpg.UndefinedTableError:  # the service has not migrated yet
        return 0


async def _pending_in_stream(js: JetStreamContext, count: int) -> bool:
    info = await js.consumer_info(subjects.EVENTS_STREAM, subjects.RECORDER_DURABLE)
    return info.num_pending + info.num_ack_pending >= count
