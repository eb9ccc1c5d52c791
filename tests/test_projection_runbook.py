"""The projection of runbook trajectories, applied directly to a real PostgreSQL
(no bus), and the read views of them; last, a replay through a real JetStream."""

from __future__ import annotations

import contextlib
import itertools
import os
import random
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from nats.js.errors import NotFoundError
from pydantic import BaseModel

from jetty_cli.embedded import EmbeddedPostgres
from services.recorder.projection import PoisonEvent, apply, handle, parse
from services.recorder.replay import replay
from shared import subjects
from shared.bus import connect, encode_event, ensure_streams
from shared.db.trajectories import (
    TrajectoryView,
    get_artifact,
    get_trajectory,
    list_trajectories,
    with_artifact_urls,
)
from shared.events import Envelope
from shared.events.completion import (
    CompletionFinished,
    CompletionRequested,
    ErrorRecord,
    ResponseRecord,
    Usage,
)
from shared.events.registry import type_name
from shared.events.runbook import (
    AgentOutcome,
    ArtifactStored,
    Budget,
    RunbookCancelled,
    RunbookCompleted,
    RunbookFailed,
    RunbookRequested,
    RunbookStarted,
    RunbookStep,
)
from tests.test_projection import finished as call_finished_passthrough
from tests.test_projection import requested as call_requested_passthrough

T0 = datetime(2025, 3, 4, 5, 6, 7, 250000, tzinfo=UTC)
TID = "tr_runbook0000000000001"
TABLES = {
    "trajectories": "trajectory_id",
    "steps": "trajectory_id, step_index",
    "runbooks": "trajectory_id",
    "artifacts": "trajectory_id, path",
    "dead_events": "stream_seq",
}
SHA = "ab" * 32
MODEL = "anthropic/claude-sonnet-4"


# --- event builders -------------------------------------------------------------


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def event(
    data: BaseModel, trajectory_id: str = TID, *, tag: str = "", collection: str = "acme"
) -> Envelope:
    """An envelope whose id names the run, the type and ``tag`` (unique per event)."""
    kind = type_name(data)
    moments = [getattr(data, name, None) for name in _TIME_FIELDS]
    return Envelope(
        id=f"{trajectory_id}-{kind}{tag}",
        type=kind,
        source="test",
        time=next(m for m in moments if m is not None),
        trajectory_id=trajectory_id,
        collection=collection,
        data=data.model_dump(mode="json"),
    )


_TIME_FIELDS = ("requested_at", "started_at", "ended_at", "stored_at", "received_at")


def requested(tid: str = TID, *, task: str = "report") -> Envelope:
    return event(
        RunbookRequested(
            task=task,
            agent="claude-code",
            model=MODEL,
            runbook="Summarise the CSV into results/summary.md.",
            prompt="Do it now.",
            file_paths=["uploads/data.csv"],
            budget=Budget(max_tokens=10_000, max_cost_usd="1.5"),
            timeout_s=600,
            requested_at=T0,
            request={"model": MODEL, "jetty": {"runbook": True, "agent": "claude-code"}},
        ),
        tid,
    )


def started(tid: str = TID, *, seconds: float = 2, sandbox: str = "sb_1") -> Envelope:
    data = RunbookStarted(
        task="report", started_at=at(seconds), runner="runner/h-1", backend="local",
        sandbox_id=sandbox,
    )  # fmt: skip
    return event(data, tid, tag=f"-{sandbox}")


def _end_fields(seconds: float) -> dict[str, Any]:
    return {
        "task": "report",
        "ended_at": at(seconds),
        "agent_started_at": at(3),
        "outcome": AgentOutcome(
            result="Done: 2 rows summarised.",
            exit_code=0,
            num_turns=2,
            reported_usage={"input_tokens": 300, "output_tokens": 70},
        ),
    }


def completed(tid: str = TID, *, seconds: float = 10) -> Envelope:
    return event(RunbookCompleted(**_end_fields(seconds)), tid)


def failed(tid: str = TID, *, seconds: float = 10) -> Envelope:
    error = ErrorRecord(status=402, type="budget_exceeded", message="token budget spent")
    fields = _end_fields(seconds) | {"outcome": AgentOutcome(exit_code=1)}
    return event(RunbookFailed(**fields, error=error), tid)


def cancelled(tid: str = TID, *, seconds: float = 10, from_pending: bool = False) -> Envelope:
    fields = _end_fields(seconds)
    if from_pending:
        fields |= {"agent_started_at": None, "outcome": AgentOutcome()}
    return event(RunbookCancelled(**fields), tid)


def agent_step(index: int, kind: str, seconds: float, tid: str = TID, **detail: Any) -> Envelope:
    data = RunbookStep.model_validate(
        {"task": "report", "step_index": index, "kind": kind, "started_at": at(seconds),
         "ended_at": at(seconds + 0.125), **detail}
    )  # fmt: skip
    return event(data, tid, tag=f"-{index}")


def call_requested(index: int, seconds: float, tid: str = TID) -> Envelope:
    data = CompletionRequested(
        task="report", mode="runbook", step_index=index, model=MODEL, provider="anthropic",
        stream=True, ingress="anthropic.messages",
        request={"model": MODEL, "messages": [{"role": "user", "content": "go"}]},
        received_at=at(seconds),
    )  # fmt: skip
    return event(data, tid, tag=f"-{index}")


def call_finished(
    index: int, seconds: float, tokens: tuple[int, int], cost: str | None, tid: str = TID
) -> Envelope:
    prompt, completion = tokens
    data = CompletionFinished(
        task="report", mode="runbook", step_index=index, model=MODEL, provider="anthropic",
        response=ResponseRecord(content=f"turn {index}", finish_reason="tool_calls"),
        usage=Usage(prompt_tokens=prompt, completion_tokens=completion,
                    total_tokens=prompt + completion),
        latency_ms=500.0, ttft_ms=100.0, received_at=at(seconds), ended_at=at(seconds + 0.5),
        cost_usd=cost,
    )  # fmt: skip
    return event(data, tid, tag=f"-{index}")


def artifact(
    path: str, seconds: float, *, size: int = 42, tid: str = TID, tag: str = ""
) -> Envelope:
    data = ArtifactStored(
        task="report", path=path, key=f"acme/report/{tid}/{path}", size=size, sha256=SHA,
        content_type="text/markdown" if path.endswith(".md") else "application/json",
        stored_at=at(seconds),
    )  # fmt: skip
    return event(data, tid, tag=f"-{path}{tag}")


def full_run(tid: str = TID) -> list[Envelope]:
    """A whole run in the order it happens: two model calls (the second a quick call
    with only its end event), the agent's steps between them, two files, the end."""
    return [
        requested(tid),
        started(tid),
        call_requested(0, 3, tid),
        call_finished(0, 3, (100, 20), "0.0010000000", tid),
        agent_step(1, "tool_call", 4, tid, tool_name="Read", tool_call_id="toolu_1",
                   tool_input={"file_path": "uploads/data.csv"}),
        agent_step(2, "tool_result", 4.5, tid, text="a,b\n1,2", tool_call_id="toolu_1"),
        call_finished(3, 5, (200, 50), "0.0025000000", tid),
        agent_step(4, "message", 6, tid, text="Wrote results/summary.md"),
        artifact("results/summary.md", 9, tid=tid),
        artifact("results/data.json", 9, size=7, tid=tid),
        completed(tid),
    ]  # fmt: skip


def one_of_each(tid: str = TID) -> list[Envelope]:
    """One event of every runbook-family type."""
    return [
        requested(tid), started(tid), completed(tid), failed(tid), cancelled(tid),
        agent_step(1, "message", 1, tid, text="hi"), artifact("a.txt", 1, tid=tid),
    ]  # fmt: skip


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
    for table, key in TABLES.items():
        rows = await conn.fetch(f"SELECT to_jsonb(x)::text AS r FROM {table} x ORDER BY {key}")
        tables[table] = [r["r"] for r in rows]
    return tables


async def reset(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    await conn.execute("TRUNCATE " + ", ".join(TABLES))


async def apply_split(
    conn: asyncpg.Connection[asyncpg.Record], events: Sequence[Envelope], cuts: Sequence[int]
) -> None:
    """Apply ``events`` in batches that end at each of ``cuts``."""
    start = 0
    for cut in [*cuts, len(events)]:
        if cut > start:
            await apply(events[start:cut], conn)
            start = cut


async def view_of(conn: asyncpg.Connection[asyncpg.Record], tid: str = TID) -> TrajectoryView:
    view = await get_trajectory(conn, "acme", tid)
    assert view is not None
    return view


# --- a whole run ----------------------------------------------------------------


async def test_full_run_view(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    events = full_run()
    assert await apply(events, conn) > 0
    view = await view_of(conn)
    body = view.model_dump(mode="json")
    assert (body["mode"], body["status"], body["task"], body["model"]) == (
        "runbook", "completed", "report", MODEL,
    )  # fmt: skip
    assert view.created_at == T0 and view.completed_at == at(10)
    assert body["latency_ms"] == 10_000.0 and body["ttft_ms"] is None
    # Usage and cost: the sums over the agent's two model calls.
    assert body["usage"] == {"prompt_tokens": 300, "completion_tokens": 70, "total_tokens": 370}
    assert body["cost_usd"] == 0.0035
    assert body["error"] is None
    assert body["agent"] == "claude-code"
    assert body["timing"] == {
        "queued_ms": 2000.0, "run_ms": 8000.0, "agent_ms": 7000.0, "total_ms": 10_000.0,
    }  # fmt: skip
    run = body["runbook"]
    assert run["status"] == "completed" and run["agent"] == "claude-code"
    assert run["result"] == "Done: 2 rows summarised."
    assert (run["exit_code"], run["num_turns"]) == (0, 2)
    assert run["reported_usage"] == {"input_tokens": 300, "output_tokens": 70}
    assert run["file_paths"] == ["uploads/data.csv"]
    assert run["budget"] == {"max_tokens": 10_000, "max_cost_usd": "1.5"}
    assert (run["runner"], run["backend"], run["sandbox_id"]) == ("runner/h-1", "local", "sb_1")
    assert run["timeout_s"] == 600.0 and run["cancel_reason"] is None and run["error"] is None
    assert view.runbook is not None and view.runbook.started_at == at(2)
    assert view.runbook.agent_started_at == at(3) and view.runbook.ended_at == at(10)

    assert body["artifacts"] == [
        {"name": "data.json", "path": "results/data.json", "url": None, "size_bytes": 7,
         "sha256": SHA, "media_type": "application/json"},
        {"name": "summary.md", "path": "results/summary.md", "url": None, "size_bytes": 42,
         "sha256": SHA, "media_type": "text/markdown"},
    ]  # fmt: skip

    steps = body["steps"]
    assert [(s["index"], s["kind"], s["status"]) for s in steps] == [
        (0, "completion", "completed"), (1, "tool_call", "completed"),
        (2, "tool_result", "completed"), (3, "completion", "completed"),
        (4, "message", "completed"),
    ]  # fmt: skip
    call, tool_call, tool_result, quick_call, message = steps
    assert call["usage"]["total_tokens"] == 120 and call["cost_usd"] == 0.001
    assert call["provider"] == "anthropic" and call["ingress"] == "anthropic.messages"
    assert call["request"]["messages"] == [{"role": "user", "content": "go"}]
    assert call["started_at"] == "2025-03-04T05:06:10.250000Z"
    assert call["ended_at"] == "2025-03-04T05:06:10.750000Z"
    assert "text" not in call and "is_error" not in call
    assert quick_call["usage"]["total_tokens"] == 250 and quick_call["request"] is None
    assert tool_call["tool_name"] == "Read" and tool_call["tool_call_id"] == "toolu_1"
    assert tool_call["tool_input"] == {"file_path": "uploads/data.csv"}
    assert tool_call["is_error"] is False and "text" not in tool_call
    assert tool_call["started_at"] == "2025-03-04T05:06:11.250000Z"
    assert tool_call["latency_ms"] == 125.0
    assert (tool_result["text"], tool_result["tool_call_id"]) == ("a,b\n1,2", "toolu_1")
    assert message["text"] == "Wrote results/summary.md"
    for agent in (tool_call, tool_result, message):
        assert agent["usage"] is None and agent["cost_usd"] is None and agent["request"] is None
    # The listing shows the runbook like any trajectory.
    page = await list_trajectories(conn, "acme", task="report")
    assert [(t.trajectory_id, t.mode, t.status) for t in page.data] == [
        (TID, "runbook", "completed")
    ]
    assert page.data[0].cost_usd == 0.0035


async def test_passthrough_json_is_unchanged_beside_runbooks(
    conn: asyncpg.Connection[asyncpg.Record],
) -> None:
    """A passthrough trajectory's JSON carries none of the runbook fields."""
    await apply(
        [*full_run(), call_requested_passthrough("tr_pass"), call_finished_passthrough("tr_pass")],
        conn,
    )
    body = (await view_of(conn, "tr_pass")).model_dump(mode="json")
    assert "agent" not in body and "runbook" not in body and "timing" not in body
    assert body["artifacts"] == [] and body["mode"] == "passthrough"
    assert "status" not in body["steps"][0] and "started_at" not in body["steps"][0]


async def test_reads_of_another_collection_and_artifact(
    conn: asyncpg.Connection[asyncpg.Record],
) -> None:
    await apply(full_run(), conn)
    assert await get_trajectory(conn, "other", TID) is None

    record = await get_artifact(conn, "acme", TID, "results/summary.md")
    assert record is not None
    assert (record.key, record.size, record.sha256, record.content_type) == (
        f"acme/report/{TID}/results/summary.md", 42, SHA, "text/markdown",
    )  # fmt: skip
    assert (record.trajectory_id, record.task, record.stored_at) == (TID, "report", at(9))
    assert await get_artifact(conn, "other", TID, "results/summary.md") is None
    assert await get_artifact(conn, "acme", TID, "results/nope.md") is None

    view = with_artifact_urls(
        await view_of(conn), "https://gw.example/api/v1/trajectories/x/artifacts/"
    )
    assert [a.url for a in view.artifacts] == [
        "https://gw.example/api/v1/trajectories/x/artifacts/results/data.json",
        "https://gw.example/api/v1/trajectories/x/artifacts/results/summary.md",
    ]
    signed = with_artifact_urls(view, lambda path: f"s3://signed/{path}?sig=1")
    assert next(a.url for a in signed.artifacts) == "s3://signed/results/data.json?sig=1"


async def test_artifact_stored_twice_keeps_the_later(
    conn: asyncpg.Connection[asyncpg.Record],
) -> None:
    first = artifact("out.txt", 5, size=1)
    later = artifact("out.txt", 6, size=2, tag="-again")
    tie = artifact("out.txt", 6, size=3, tag="-bgain")  # same time: the larger id wins
    results = set()
    for order in itertools.permutations([requested(), first, later, tie]):
        for cuts in ([], [1, 2, 3], [2]):
            await reset(conn)
            await apply_split(conn, order, cuts)
            results.add(tuple((await dump(conn))["artifacts"]))
    assert len(results) == 1
    record = await get_artifact(conn, "acme", TID, "out.txt")
    assert record is not None and record.size == 3


# --- status and precedence --------------------------------------------------------


async def test_pending_only(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    await handle(requested(), conn)
    view = await view_of(conn)
    assert (view.status, view.mode) == ("pending", "runbook")
    assert view.completed_at is None and view.latency_ms is None
    assert view.usage is None and view.cost_usd is None and view.steps == []
    assert view.timing is not None and view.runbook is not None
    assert view.timing.model_dump() == {
        "queued_ms": None, "run_ms": None, "agent_ms": None, "total_ms": None,
    }  # fmt: skip
    assert view.runbook.result is None and view.runbook.file_paths == ["uploads/data.csv"]
    await handle(started(), conn)
    assert (await view_of(conn)).status == "running"


async def test_cancelled_while_pending(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    await apply([cancelled(from_pending=True), requested()], conn)
    view = await view_of(conn)
    assert view.status == "cancelled" and view.error is None
    assert view.runbook is not None and view.runbook.cancel_reason == "cancel_requested"
    assert view.runbook.started_at is None and view.timing is not None
    assert (view.timing.queued_ms, view.timing.total_ms) == (None, 10_000.0)


@pytest.mark.parametrize(
    ("ends", "status"),
    [
        ([completed], "completed"),
        ([failed], "failed"),
        ([cancelled], "cancelled"),
        ([completed, cancelled], "cancelled"),
        ([completed, failed], "failed"),
        ([cancelled, failed], "failed"),
    ],
)
async def test_terminal_status_wins_in_any_order(
    conn: asyncpg.Connection[asyncpg.Record], ends: list[Any], status: str
) -> None:
    """Requested, started and the end event(s) in every order and split: one
    result, a terminal status over pending/running and the worst news among ends."""
    events = [requested(), started(), *(end() for end in ends)]
    dumps = []
    for order in itertools.permutations(events):
        for cuts in ([], list(range(1, len(order))), [len(order) // 2]):
            await reset(conn)
            await apply_split(conn, order, cuts)
            dumps.append(await dump(conn))
    assert all(d == dumps[0] for d in dumps)
    view = await view_of(conn)
    assert view.status == status and view.runbook is not None
    assert view.runbook.status == status
    if status == "failed":
        assert view.error is not None and view.error.type == "budget_exceeded"
        assert view.runbook.error == view.error
    else:
        assert view.error is None


async def test_latest_start_wins(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """A run resumed on another sandbox: the later start names it, in any order."""
    events = [requested(), started(seconds=2, sandbox="sb_1"), started(seconds=30, sandbox="sb_2")]
    rows = set()
    for order in itertools.permutations(events):
        await reset(conn)
        for one in order:
            await handle(one, conn)
        rows.add(tuple((await dump(conn))["runbooks"]))
    assert len(rows) == 1
    view = await view_of(conn)
    assert view.runbook is not None and view.runbook.sandbox_id == "sb_2"


async def test_inner_calls_before_the_request(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """The agent's model calls (and steps, the start, even the end) may be projected
    before runbook.requested: no trajectory row until it comes, then the full one."""
    early = [e for e in full_run() if e.type != "runbook.requested"]
    await apply(early, conn)
    assert await get_trajectory(conn, "acme", TID) is None
    assert await conn.fetchval("SELECT count(*) FROM trajectories") == 0
    await handle(requested(), conn)
    late = await dump(conn)
    view = await view_of(conn)
    assert view.status == "completed" and view.usage is not None
    assert view.usage.total_tokens == 370 and view.cost_usd == 0.0035
    await reset(conn)
    await apply(full_run(), conn)
    assert await dump(conn) == late


async def test_unpriced_call_leaves_cost_unknown(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    await apply(
        [requested(), call_finished(0, 1, (5, 5), None), call_finished(1, 2, (5, 5), "0.1")], conn
    )
    view = await view_of(conn)
    assert view.usage is not None and view.usage.total_tokens == 20
    assert view.cost_usd is None


# --- the projection's invariants ---------------------------------------------------


async def test_idempotent(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    events = full_run()
    written = await apply(events, conn)
    assert written > 0
    first = await dump(conn)
    assert await apply(events, conn) == 0
    for one in events:
        assert await handle(one, conn) == 0
    assert await dump(conn) == first
    await reset(conn)
    assert await apply(events + events[::-1], conn) == written
    assert await dump(conn) == first


async def test_any_order_and_split_gives_the_same_rows(
    conn: asyncpg.Connection[asyncpg.Record],
) -> None:
    """The whole run, with a second run interleaved, in many orders and batch
    splits (seeded shuffles: the same cases every time) gives identical tables."""
    events = full_run() + full_run("tr_runbook0000000000002")[:6]
    await apply(events, conn)
    expected = await dump(conn)
    rng = random.Random(4)
    orders = [events, events[::-1]] + [rng.sample(events, len(events)) for _ in range(40)]
    for order in orders:
        cuts = sorted(rng.sample(range(1, len(order)), rng.randint(0, 6)))
        await reset(conn)
        await apply_split(conn, order, cuts)
        assert await dump(conn) == expected
    await reset(conn)
    for one in events[::-1]:
        await handle(one, conn)
    assert await dump(conn) == expected
    second = await view_of(conn, "tr_runbook0000000000002")
    assert second.status == "running" and second.usage is not None


async def test_invalid_runbook_payloads_are_poison() -> None:
    step = agent_step(1, "message", 1, text="x")
    with pytest.raises(PoisonEvent, match="invalid"):
        parse(step.model_copy(update={"data": {**(step.data or {}), "kind": "dance"}}))
    stored = artifact("a.txt", 1)
    with pytest.raises(PoisonEvent, match="invalid"):
        parse(stored.model_copy(update={"data": {**(stored.data or {}), "sha256": "nope"}}))
    for one in one_of_each():
        assert parse(one).data.model_dump(mode="json") == one.data


# --- replay ---------------------------------------------------------------------


async def test_replay_gives_identical_tables(
    nats_url: str, migrated_database_url: str, pg_server: EmbeddedPostgres
) -> None:
    """The run published on the events stream and replayed into an empty database
    gives the tables that projecting the events directly (one by one, reversed)
    gives."""
    events = full_run()
    nc = await connect(nats_url, name="test-projection-runbook")
    try:
        js = nc.jetstream(timeout=10)
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(subjects.EVENTS_STREAM)
        await ensure_streams(js)
        for one in events:
            await js.publish(
                subjects.event_subject(one.collection, one.type),
                encode_event(one),
                headers={"Nats-Msg-Id": one.id},
            )
    finally:
        await nc.drain()

    live = await asyncpg.connect(migrated_database_url, timeout=10)
    try:
        for one in events[::-1]:
            await handle(one, live)
        expected = await dump(live)
    finally:
        await live.close(timeout=10)

    rebuilt = pg_server.create_database("replay_rb_" + os.urandom(4).hex())
    try:
        result = await replay(nats_url, rebuilt, batch_size=4)
        assert (result.messages, result.dead) == (len(events), 0)
        conn = await asyncpg.connect(rebuilt, timeout=10)
        try:
            assert await dump(conn) == expected
            assert (await view_of(conn)).status == "completed"
        finally:
            await conn.close(timeout=10)
    finally:
        pg_server.drop_database(rebuilt.rsplit("/", 1)[1])
