"""The projection's rules, applied directly to a real PostgreSQL (no bus)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from pydantic import ValidationError

from services.recorder.projection import STATUS_RANK, PoisonEvent, apply, handle, parse
from shared.bus import encode_event
from shared.db.pool import MigrationError, apply_migrations, load_migrations
from shared.db.trajectories import (
    STATUSES,
    InvalidCursor,
    InvalidQuery,
    build_list_query,
    encode_cursor,
    get_trajectory,
    list_trajectories,
)
from shared.events import Envelope
from shared.events.completion import (
    CompletionCancelled,
    CompletionFailed,
    CompletionFinished,
    CompletionRequested,
    ErrorRecord,
    ResponseRecord,
    ToolCall,
    Usage,
)
from shared.events.registry import PAYLOADS, decode_envelope, type_name

T0 = datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
PROJECTION_TABLES = {
    "trajectories": "trajectory_id",
    "steps": "trajectory_id, step_index",
    "dead_events": "stream_seq",
}


# --- event builders -------------------------------------------------------------


def envelope(
    data: Any, trajectory_id: str, *, collection: str = "acme", event_id: str | None = None
) -> Envelope:
    kind = type_name(data)
    return Envelope(
        id=event_id or f"{trajectory_id}-{kind}",
        type=kind,
        source="test",
        time=data.received_at if isinstance(data, CompletionRequested) else data.ended_at,
        trajectory_id=trajectory_id,
        collection=collection,
        data=data.model_dump(mode="json"),
    )


def requested(
    trajectory_id: str,
    *,
    at: datetime = T0,
    task: str = "_chat",
    model: str = "mock/echo",
    collection: str = "acme",
    content: str = "hello",
) -> Envelope:
    data = CompletionRequested(
        task=task,
        model=model,
        provider="mock",
        stream=True,
        request={
            "model": model,
            "messages": [{"role": "user", "content": content}],
            "temperature": 0.5,
        },
        received_at=at,
    )
    return envelope(data, trajectory_id, collection=collection)


def _ended_fields(at: datetime, task: str, model: str, content: str | None) -> dict[str, Any]:
    return {
        "task": task,
        "model": model,
        "provider": "mock",
        "response": ResponseRecord(
            content=content,
            tool_calls=[ToolCall(id="call_1", name="lookup", arguments='{"q": 1}')],
            finish_reason="tool_calls",
            upstream_id="chatcmpl-123",
            upstream_model="echo-1",
        ),
        "usage": Usage(prompt_tokens=7, completion_tokens=5, total_tokens=12),
        "latency_ms": 12.5,
        "ttft_ms": 3.25,
        "received_at": at,
        "ended_at": at + timedelta(milliseconds=12, microseconds=500),
    }


def finished(
    trajectory_id: str,
    *,
    at: datetime = T0,
    task: str = "_chat",
    model: str = "mock/echo",
    collection: str = "acme",
) -> Envelope:
    data = CompletionFinished(**_ended_fields(at, task, model, "hi there"))
    return envelope(data, trajectory_id, collection=collection)


def failed(trajectory_id: str, *, at: datetime = T0) -> Envelope:
    fields = _ended_fields(at, "_chat", "mock/echo", None) | {"usage": None, "ttft_ms": None}
    error = ErrorRecord(status=502, type="upstream_error", message="upstream said 500")
    return envelope(CompletionFailed(**fields, error=error), trajectory_id)


def cancelled(trajectory_id: str, *, at: datetime = T0) -> Envelope:
    fields = _ended_fields(at, "_chat", "mock/echo", "hi th")
    return envelope(CompletionCancelled(**fields), trajectory_id)


def quick(
    trajectory_id: str, end: Any = None, *, content: str = "hello", event_id: str | None = None
) -> Envelope:
    """The end event of a call that ended before the proxy's requested delay: it
    carries the request side (the same fields ``requested`` would have sent)."""
    event = (end or finished)(trajectory_id)
    ask = requested(trajectory_id, content=content).data
    assert event.data is not None and ask is not None
    data = type(parse(event).data)(
        **event.data | {"request": ask["request"], "stream": True, "ingress": "chat.completions"}
    )
    return envelope(data, trajectory_id, event_id=event_id)


# --- helpers --------------------------------------------------------------------


@pytest.fixture
async def conn(migrated_database_url: str) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    connection = await asyncpg.connect(migrated_database_url, timeout=10, command_timeout=30)
    try:
        yield connection
    finally:
        await connection.close(timeout=10)


async def dump(conn: asyncpg.Connection[asyncpg.Record]) -> dict[str, list[str]]:
    """Every projection table, every column, ordered by key (as JSON text)."""
    tables = {}
    for table, key in PROJECTION_TABLES.items():
        rows = await conn.fetch(f"SELECT to_jsonb(x)::text AS r FROM {table} x ORDER BY {key}")
        tables[table] = [r["r"] for r in rows]
    return tables


async def reset(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    await conn.execute("TRUNCATE " + ", ".join(PROJECTION_TABLES))


# --- rules ----------------------------------------------------------------------


async def test_passthrough_trajectory_view(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    assert await apply([requested("tr_1"), finished("tr_1")], conn) == 2

    view = await get_trajectory(conn, "acme", "tr_1")
    assert view is not None
    body = view.model_dump(mode="json")
    assert set(body) == {
        "trajectory_id", "collection", "task", "mode", "status", "model", "created_at",
        "completed_at", "latency_ms", "ttft_ms", "usage", "steps", "artifacts", "error",
        "cost_usd",
    }  # fmt: skip
    assert body["status"] == "completed"
    assert (body["collection"], body["task"], body["mode"]) == ("acme", "_chat", "passthrough")
    assert body["model"] == "mock/echo"
    assert view.created_at == T0
    assert view.completed_at == T0 + timedelta(milliseconds=12, microseconds=500)
    assert (body["latency_ms"], body["ttft_ms"]) == (12.5, 3.25)
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    assert body["artifacts"] == []
    assert body["error"] is None
    assert body["cost_usd"] is None  # the mock provider is unpriced
    [step] = body["steps"]
    assert set(step) == {
        "index", "kind", "request", "response", "usage", "latency_ms", "ttft_ms",
        "provider", "model", "error", "cost_usd", "ingress", "origin",
    }  # fmt: skip
    assert (step["index"], step["kind"], step["provider"]) == (0, "completion", "mock")
    assert step["origin"] == "gateway"  # the gateway made this call itself
    assert step["request"]["messages"] == [{"role": "user", "content": "hello"}]
    assert step["request"]["temperature"] == 0.5
    assert step["response"] == {
        "content": "hi there",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "lookup", "arguments": '{"q": 1}'},
            }
        ],
        "finish_reason": "tool_calls",
        "upstream_id": "chatcmpl-123",
    }
    assert step["usage"] == body["usage"]
    assert step["error"] is None
    # The stored response keeps everything the event carried.
    stored = orjson.loads(await conn.fetchval("SELECT response::text FROM steps"))
    assert stored["upstream_model"] == "echo-1"
    assert "choices" in stored


async def test_requested_only_is_running(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    await handle(requested("tr_run"), conn)
    view = await get_trajectory(conn, "acme", "tr_run")
    assert view is not None
    assert view.status == "running"
    assert view.completed_at is None and view.usage is None and view.latency_ms is None
    assert view.steps[0].response is None and view.steps[0].request is not None


async def test_other_collection_is_unknown(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    await apply([requested("tr_x"), finished("tr_x")], conn)
    assert await get_trajectory(conn, "other", "tr_x") is None
    assert await get_trajectory(conn, "acme", "tr_nope") is None
    page = await list_trajectories(conn, "other")
    assert page.data == [] and not page.has_more


async def test_idempotent(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    events = [requested("tr_1"), finished("tr_1"), requested("tr_2"), failed("tr_2")]
    assert await apply(events, conn) == 4
    first = await dump(conn)
    assert await apply(events, conn) == 0
    assert await apply(events + events, conn) == 0
    for event in events:
        assert await handle(event, conn) == 0
    assert await dump(conn) == first
    # Duplicates inside one batch count once.
    await reset(conn)
    assert await apply(events + list(reversed(events)), conn) == 4
    assert await dump(conn) == first


async def row_versions(conn: asyncpg.Connection[asyncpg.Record]) -> list[tuple[str, str]]:
    """Each projected row's key and transaction id (xmin): a rewrite changes it."""
    rows = await conn.fetch(
        "SELECT trajectory_id || ':' || step_index AS k, xmin::text AS v FROM steps"
        " UNION ALL SELECT trajectory_id, xmin::text FROM trajectories ORDER BY 1"
    )
    return [(r["k"], r["v"]) for r in rows]


async def test_redelivery_after_out_of_order_commits_writes_nothing(
    conn: asyncpg.Connection[asyncpg.Record],
) -> None:
    """No row per event remembers what was applied: the rows do. Events committed
    out of order (the end before the request, a worse end after a better one),
    then every one of them redelivered as if the recorder crashed between commit
    and ack, in any grouping: nothing is rewritten, and the rows are those of one
    batch of the distinct events into an empty projection."""
    events = [finished("tr_r"), requested("tr_r"), failed("tr_r"), quick("tr_q")]
    for event in events:
        assert await handle(event, conn) > 0  # each one changes the rows
    versions, rows = await row_versions(conn), await dump(conn)
    for order in itertools.permutations(events):
        assert await apply(list(order[:2]), conn) == 0
        assert await apply(list(order), conn) == 0
    for event in events:
        assert await handle(event, conn) == 0
    assert await row_versions(conn) == versions
    assert await dump(conn) == rows
    await reset(conn)
    await apply(events + events, conn)
    assert await dump(conn) == rows
    view = await get_trajectory(conn, "acme", "tr_r")
    assert view is not None and view.status == "failed"


@pytest.mark.parametrize("end", [finished, failed, cancelled], ids=lambda f: f.__name__)
async def test_order_independent(conn: asyncpg.Connection[asyncpg.Record], end: Any) -> None:
    events = [requested("tr_o"), end("tr_o")]
    dumps = []
    for order in itertools.permutations(events):
        for batched in (True, False):
            await reset(conn)
            if batched:
                await apply(list(order), conn)
            else:
                for event in order:
                    await handle(event, conn)
            dumps.append(await dump(conn))
    assert all(d == dumps[0] for d in dumps)
    assert len(dumps[0]["trajectories"]) == 1


async def test_conflicting_end_events_resolve_the_same_in_any_order(
    conn: asyncpg.Connection[asyncpg.Record],
) -> None:
    """Two different end facts about one step (should not happen, but must not
    make the result depend on arrival order): the worse news wins."""
    events = [requested("tr_c"), finished("tr_c"), failed("tr_c"), cancelled("tr_c")]
    dumps = []
    for order in itertools.permutations(events):
        # One by one, all in one batch (folded in memory first), and in two batches.
        for split in (1, 4, 2):
            await reset(conn)
            for start in range(0, len(order), split):
                await apply(order[start : start + split], conn)
            dumps.append(await dump(conn))
    assert len(dumps) == 72
    assert all(d == dumps[0] for d in dumps)
    view = await get_trajectory(conn, "acme", "tr_c")
    assert view is not None and view.status == "failed"


async def test_status_rank_is_the_same_in_python_and_sql(
    conn: asyncpg.Connection[asyncpg.Record],
) -> None:
    for status, rank in STATUS_RANK.items():
        assert await conn.fetchval("SELECT jetty_status_rank($1)", status) == rank
    assert set(STATUS_RANK) == set(STATUSES)


async def test_end_event_alone_then_request(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    await handle(finished("tr_e"), conn)
    view = await get_trajectory(conn, "acme", "tr_e")
    assert view is not None
    # Everything but the request is known from the end event alone.
    assert view.status == "completed" and view.created_at == T0 and view.steps[0].request is None
    await handle(requested("tr_e"), conn)
    view = await get_trajectory(conn, "acme", "tr_e")
    assert view is not None
    assert view.status == "completed"  # a late request never reopens a step
    assert view.steps[0].request is not None


async def step_row(conn: asyncpg.Connection[asyncpg.Record], trajectory_id: str) -> dict[str, Any]:
    row = await conn.fetchval(
        "SELECT to_jsonb(s)::text FROM steps s WHERE trajectory_id = $1", trajectory_id
    )
    result: dict[str, Any] = orjson.loads(row)
    return result


async def test_end_event_with_request_is_a_whole_step(
    conn: asyncpg.Connection[asyncpg.Record],
) -> None:
    """One end event carrying the request gives the step and trajectory that a
    requested event plus an end event give; only the tracking differs."""
    await apply([requested("tr_two"), finished("tr_two")], conn)
    assert await handle(quick("tr_one"), conn) == 2  # its step and its trajectory
    two, one = await step_row(conn, "tr_two"), await step_row(conn, "tr_one")
    assert two.pop("request_event_id") == "tr_two-completion.requested"
    assert one.pop("request_event_id") is None
    assert one.pop("end_event_id") == "tr_one-completion.finished"
    assert two.pop("end_event_id") == "tr_two-completion.finished"
    assert {**one, "trajectory_id": "tr_two"} == two
    assert one["request"]["messages"] == [{"role": "user", "content": "hello"}]
    assert (one["stream"], one["ingress"]) == (True, "chat.completions")
    views = [await get_trajectory(conn, "acme", t) for t in ("tr_one", "tr_two")]
    assert views[0] is not None and views[1] is not None
    assert views[0].status == "completed"
    assert views[0].model_dump(exclude={"trajectory_id"}) == views[1].model_dump(
        exclude={"trajectory_id"}
    )


@pytest.mark.parametrize("end", [finished, failed, cancelled], ids=lambda f: f.__name__)
async def test_requested_event_beats_the_end_events_copy(
    conn: asyncpg.Connection[asyncpg.Record], end: Any
) -> None:
    """Both a requested event and an end event carrying the request (a proxy that
    published both, or a retry): the requested event's request wins, whatever the
    order and the split into batches; replaying the same events gives the same rows."""
    events = [requested("tr_m", content="from requested"), quick("tr_m", end, content="from end")]
    dumps = []
    for order in itertools.permutations(events):
        for batched in (True, False):
            await reset(conn)
            if batched:
                await apply(list(order), conn)
            else:
                for event in order:
                    await handle(event, conn)
            dumps.append(await dump(conn))
    assert all(d == dumps[0] for d in dumps)
    row = await step_row(conn, "tr_m")
    assert row["request"]["messages"][0]["content"] == "from requested"
    assert row["request_event_id"] == "tr_m-completion.requested"
    assert row["status"] == {"finished": "completed"}.get(end.__name__, end.__name__)


async def test_mixed_end_events_with_and_without_request_resolve_the_same(
    conn: asyncpg.Connection[asyncpg.Record],
) -> None:
    """Every combination of a requested event, an end event carrying the request and
    plain end events, in every order and split, gives one result: the requested
    event's request if there is one, else the winning end event's copy."""
    events = [
        requested("tr_x", content="from requested"),
        quick("tr_x", finished, content="from finished"),
        quick("tr_x", cancelled, content="from cancelled"),
        failed("tr_x"),
    ]
    cases = [
        # the winning end event is `failed` (worst news), which carries no request
        (events[1:], None),
        # cancelled outranks completed
        (events[1:3], "from cancelled"),
        (events, "from requested"),
    ]
    for subset, expected in cases:
        dumps = []
        for order in itertools.permutations(subset):
            for split in (1, len(order), 2):
                await reset(conn)
                for start in range(0, len(order), split):
                    await apply(order[start : start + split], conn)
                dumps.append(await dump(conn))
        assert all(d == dumps[0] for d in dumps)
        row = await step_row(conn, "tr_x")
        content = None if row["request"] is None else row["request"]["messages"][0]["content"]
        assert content == expected
    # Replay: one batch of everything into an empty projection gives the same tables.
    await reset(conn)
    await apply(events, conn)
    assert await dump(conn) == dumps[0]


async def test_failed(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    await apply([failed("tr_f"), requested("tr_f")], conn)
    view = await get_trajectory(conn, "acme", "tr_f")
    assert view is not None
    assert view.status == "failed"
    assert view.error is not None
    assert (view.error.status, view.error.type) == (502, "upstream_error")
    assert view.error.message == "upstream said 500"
    assert view.steps[0].error == view.error
    assert view.usage is None and view.ttft_ms is None and view.latency_ms == 12.5
    assert view.completed_at is not None


async def test_cancelled_keeps_partial_output(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    await apply([requested("tr_k"), cancelled("tr_k")], conn)
    view = await get_trajectory(conn, "acme", "tr_k")
    assert view is not None
    assert view.status == "cancelled"
    assert view.error is None and view.steps[0].error is None
    assert view.steps[0].response is not None
    assert view.steps[0].response.content == "hi th"
    stored = orjson.loads(await conn.fetchval("SELECT response::text FROM steps"))
    assert stored["cancelled"] is True
    assert stored["cancel_reason"] == "client_disconnected"


async def test_nul_characters_are_storable(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    event = requested("tr_nul", content="a\x00b", task="t\x00")
    await handle(event, conn)
    view = await get_trajectory(conn, "acme", "tr_nul")
    assert view is not None
    assert view.task == "t\ufffd"
    assert view.steps[0].request is not None
    assert view.steps[0].request["messages"][0]["content"] == "a\ufffdb"
    # In the end event's models too (response, error).
    fields = _ended_fields(T0, "_chat", "mock/echo", "c\x00d")
    error = ErrorRecord(status=502, type="upstream_error", message="e\x00f")
    await handle(envelope(CompletionFailed(**fields, error=error), "tr_nul"), conn)
    view = await get_trajectory(conn, "acme", "tr_nul")
    assert view is not None and view.steps[0].response is not None and view.error is not None
    assert (view.steps[0].response.content, view.error.message) == ("c\ufffdd", "e\ufffdf")


async def test_unparseable_events_are_poison() -> None:
    good = requested("tr_p")
    with pytest.raises(PoisonEvent, match="unknown event type"):
        parse(good.model_copy(update={"type": "completion.exploded"}))
    with pytest.raises(PoisonEvent, match="invalid"):
        parse(good.model_copy(update={"data": {"task": 1}}))
    with pytest.raises(PoisonEvent, match="no data"):
        parse(good.model_copy(update={"data": None, "data_ref": "event/x"}))


def test_one_pass_decoding_matches_the_registry() -> None:
    """Every registered type decodes in one pass to its payload model, exactly as
    the two-step decoding (Envelope, then parse_data) does; anything else fails."""
    from tests.test_data_controls import deletion_event
    from tests.test_key_projection import key_events_of_each
    from tests.test_projection_annotations import annotation_events
    from tests.test_projection_runbook import one_of_each

    events = [requested("tr_d"), finished("tr_d"), failed("tr_d"), cancelled("tr_d"), quick("tr_d")]
    events += one_of_each("tr_d") + annotation_events("tr_d")
    events += key_events_of_each("tr_d")
    events += [deletion_event("tr_d")]
    assert {e.type for e in events} == set(PAYLOADS)
    for event in events:
        typed = decode_envelope(encode_event(event))
        assert type(typed.data) is PAYLOADS[event.type]
        assert typed.data == parse(event).data
        assert typed.model_dump(exclude={"data"}) == event.model_dump(exclude={"data"})
    with pytest.raises(ValidationError):
        decode_envelope(encode_event(events[0].model_copy(update={"type": "completion.exploded"})))
    with pytest.raises(ValidationError):
        decode_envelope(encode_event(events[1].model_copy(update={"data": {"task": 5}})))
    with pytest.raises(ValidationError):
        decode_envelope(b"not json")


# --- listing --------------------------------------------------------------------


async def test_list_pagination_and_filters(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    events = []
    for i in range(23):
        tid = f"tr_{i:03d}"
        # Pairs share a timestamp, so the id tie-break is exercised across pages.
        at = T0 + timedelta(seconds=i // 2)
        task = "alpha" if i % 2 else "beta"
        model = "mock/a" if i % 3 else "mock/b"
        events.append(requested(tid, at=at, task=task, model=model))
        if i % 4:
            events.append(finished(tid, at=at, task=task, model=model))
    events.append(requested("tr_elsewhere", collection="other"))
    await apply(events, conn)

    expected = sorted(
        ((T0 + timedelta(seconds=i // 2), f"tr_{i:03d}") for i in range(23)), reverse=True
    )
    seen: list[str] = []
    cursor = None
    while True:
        page = await list_trajectories(conn, "acme", limit=10, cursor=cursor)
        seen += [t.trajectory_id for t in page.data]
        assert page.has_more == (page.next_cursor is not None)
        if not page.has_more:
            break
        cursor = page.next_cursor
    assert seen == [tid for _, tid in expected]

    page = await list_trajectories(conn, "acme", task="alpha", limit=500)
    assert {t.task for t in page.data} == {"alpha"} and len(page.data) == 11
    page = await list_trajectories(conn, "acme", status="running", limit=500)
    assert [t.trajectory_id for t in page.data] == ["tr_020", "tr_016", "tr_012", "tr_008",
                                                   "tr_004", "tr_000"]  # fmt: skip
    page = await list_trajectories(conn, "acme", model="mock/b", limit=500)
    assert {t.model for t in page.data} == {"mock/b"} and len(page.data) == 8
    page = await list_trajectories(conn, "acme", since=T0 + timedelta(seconds=10), limit=500)
    assert [t.trajectory_id for t in page.data] == ["tr_022", "tr_021", "tr_020"]
    page = await list_trajectories(conn, "acme", task="beta", status="completed", limit=2)
    assert len(page.data) == 2 and page.has_more
    assert all(t.task == "beta" and t.status == "completed" for t in page.data)
    summary = page.data[0].model_dump(mode="json")
    assert "steps" not in summary and summary["usage"]["total_tokens"] == 12


@pytest.mark.parametrize("cursor", ["", "!!!", "bm9wZQ", "WyIxIiwibm90LWEtZGF0ZSIsIngiXQ"])
async def test_bad_cursor(conn: asyncpg.Connection[asyncpg.Record], cursor: str) -> None:
    with pytest.raises(InvalidCursor):
        await list_trajectories(conn, "acme", cursor=cursor)


async def test_bad_query(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    for kwargs in ({"limit": 0}, {"limit": 501}, {"status": "exploded"}):
        with pytest.raises(InvalidQuery):
            await list_trajectories(conn, "acme", **kwargs)
    assert issubclass(InvalidCursor, ValueError)


@pytest.mark.parametrize(
    ("filters", "index"),
    [
        ({}, "trajectories_collection_created"),
        ({"task": "alpha"}, "trajectories_collection_task_created"),
        ({"status": "running"}, "trajectories_collection_status_created"),
        ({"model": "mock/a"}, "trajectories_collection_model_created"),
        ({"model": "mock/a", "since": T0}, "trajectories_collection_model_created"),
    ],
)
async def test_list_queries_are_index_range_scans(
    conn: asyncpg.Connection[asyncpg.Record], filters: dict[str, Any], index: str
) -> None:
    """Each filter's page is read in order from its own index: no sort and no full
    scan, whatever the table size (the planner is told to avoid both if it can)."""
    cursor = encode_cursor(T0, "tr_x")
    sql, args = build_list_query("acme", limit=50, cursor=cursor, **filters)
    async with conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_sort = off")
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + sql, *args))
    assert f"Index Scan using {index}" in plan, plan
    assert "Sort" not in plan, plan
    # The keyset condition is part of the index range, not a filter on its output.
    assert "ROW(created_at, trajectory_id) < ROW(" in plan.split("Index Cond:")[1], plan


# --- migrations -----------------------------------------------------------------


async def test_migrations_concurrent_and_checked(database_url: str) -> None:
    await asyncio.gather(*(apply_migrations(database_url) for _ in range(4)))
    await apply_migrations(database_url)
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        count = await conn.fetchval("SELECT count(*) FROM schema_migrations")
        assert count == len(load_migrations())
        await conn.execute("UPDATE schema_migrations SET checksum = 'edited'")
    finally:
        await conn.close(timeout=10)
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await apply_migrations(database_url)
