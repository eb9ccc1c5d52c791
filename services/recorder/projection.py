"""The projection: events -> ``steps``, ``trajectories`` (and, through
:mod:`services.recorder.runbook_projection`, ``runbooks`` and ``artifacts``) rows.

Plain functions over an asyncpg connection, no transport; tests call them directly.
What must stay true (and is tested):

* **Idempotent by the projected rows.** Every row keeps the id of the event (or
  of each side's event) that wrote it, and every upsert only writes when the
  incoming event strictly beats the stored one by the precedence below. The same
  event applied again — a redelivery after a crash between commit and ack, an
  overlapping replay, a duplicate in one batch — ties with itself and writes
  nothing (not even a new row version). No row per event is kept for this; the
  consumer's tracking position (:mod:`services.recorder.batch`) is one row.
* **Order-independent.** For each step, a request side (``completion.requested``)
  and an end side (``finished`` / ``failed`` / ``cancelled``) are merged by fixed
  precedence, never "last writer wins": a requested event owns the request-side
  columns (the request, ``stream``, ``ingress``, task, model, …); while there is
  none, the winning end event's copy stands in (a quick call's end event carries
  the request itself, as no requested event is published for it). Among end events
  the highest ``jetty_status_rank`` wins, then the later ``ended_at``, then the
  larger event id (byte order); among request events the smaller event id. A
  trajectory row is then recomputed from its steps. So any arrival order of the
  same set of events, in any split into batches, gives the same rows.
* **No wall clock.** Every time comes from the events, so a replay of the stream
  gives identical tables.
* **Set-based.** A batch of completion events is two statements whatever its
  size (steps, trajectories; arrays through ``unnest``; the tombstones are read
  with the batch's positions in :mod:`services.recorder.batch`), not a round
  trip per event; runbook events add one statement per table they touch. The
  batch is first folded in memory to one row per step, with the same precedence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from services.recorder.annotation_projection import (
    apply_annotation_events,
    is_annotation_event,
)
from services.recorder.deletion_projection import apply_deletions, is_deletion, tombstoned
from services.recorder.key_projection import apply_key_events, is_key_event
from services.recorder.runbook_projection import (
    MODE_RUNBOOK,
    apply_runbook_events,
    recompute_runbook_trajectories,
)
from services.recorder.values import (
    STATUS_RANK,
    TRAJECTORY_COLUMNS,
    TRAJECTORY_CONFLICT,
    USAGE_AGGREGATES,
    Event,
    rows_written,
)
from services.recorder.values import json as _json
from services.recorder.values import text as _text
from services.recorder.values import utc as _utc
from shared.events.completion import (
    CompletionCancelled,
    CompletionFailed,
    CompletionFinished,
    CompletionRequested,
)
from shared.events.envelope import Envelope
from shared.events.registry import UnknownEventType, parse_data

if TYPE_CHECKING:
    from shared.db.pool import Connection

__all__ = ["STATUS_RANK", "Event", "PoisonEvent", "apply", "apply_parsed", "handle", "parse"]

STEP_KIND_COMPLETION = "completion"
# A model call through POST /v1/embeddings: the same events, ``kind`` set.
STEP_KIND_EMBEDDING = "embedding"

# Session settings for connections that run the projection. The batch statements
# take arrays whose length varies from 1 to thousands; a cached generic plan (which
# PostgreSQL switches to after five executions) guesses badly and was measured at
# twice the cost of planning each batch afresh.
SERVER_SETTINGS: dict[str, str] = {"plan_cache_mode": "force_custom_plan"}


class PoisonEvent(ValueError):
    """An event that can never be projected (unknown type, invalid payload)."""


def parse(envelope: Envelope) -> Event:
    """Validate the payload of ``envelope``; raise :class:`PoisonEvent` if it never will."""
    if envelope.data is None:
        raise PoisonEvent(f"event {envelope.id} has no data (claim check not resolved)")
    try:
        data = parse_data(envelope.type, envelope.data)
    except UnknownEventType as exc:
        raise PoisonEvent(f"unknown event type {envelope.type!r}") from exc
    except ValidationError as exc:
        raise PoisonEvent(f"invalid {envelope.type} payload: {exc}") from exc
    return Event.of(envelope, data)


async def handle(event: Envelope, conn: Connection) -> int:
    """Project one event; returns how many rows it wrote (0: already applied)."""
    return await apply([event], conn)


async def apply(events: Sequence[Envelope], conn: Connection) -> int:
    """Project a batch atomically; returns how many rows it wrote (0: nothing new).

    Raises :class:`PoisonEvent` (before touching the database) if one cannot parse.
    """
    return await apply_parsed([parse(e) for e in events], conn)


async def apply_parsed(
    events: Sequence[Event], conn: Connection, tombstoned: set[str] | None = None
) -> int:
    """Project already-parsed events atomically (inside the caller's transaction
    if it opened one, else in one of its own); returns how many rows it wrote.

    0 means the batch changed nothing: every event was already applied (a
    redelivery or a replay over existing rows), lost to what is stored, or
    belongs to a deleted trajectory. ``tombstoned``: which of the events'
    trajectories are deleted, when the caller already read it in the same
    transaction (saves a round trip); else it is read here.
    """
    unique: dict[str, Event] = {}
    for event in events:
        unique.setdefault(event.id, event)
    if not unique:
        return 0
    if conn.is_in_transaction():
        return await _apply(list(unique.values()), conn, tombstoned)
    async with conn.transaction():
        return await _apply(list(unique.values()), conn, tombstoned)


async def _apply(fresh: list[Event], conn: Connection, known_gone: set[str] | None) -> int:
    written = 0
    deletions = [e for e in fresh if is_deletion(e)]
    gone: set[str] = set()
    if deletions:
        gone, removed = await apply_deletions(deletions, conn)
        written += removed
    if known_gone is None:
        gone |= await tombstoned(sorted({e.trajectory_id for e in fresh} - gone), conn)
    else:
        gone |= known_gone
    if gone:
        fresh = [e for e in fresh if e.trajectory_id not in gone]
        if not fresh:
            return written
    calls = [e for e in fresh if isinstance(e.data, _COMPLETION_EVENTS)]
    keys = [e for e in fresh if is_key_event(e)]
    if keys:
        written += await apply_key_events(keys, conn)
    others = [
        e for e in fresh if not isinstance(e.data, _COMPLETION_EVENTS) and not is_key_event(e)
    ]
    if calls:
        rows = [_step_row(facts) for _, facts in sorted(_fold(calls).items())]
        # Key order (sorted above and in the statement), so that two recorders
        # sharing the durable lock rows in the same order and cannot deadlock.
        written += rows_written(await conn.execute(_UPSERT_STEPS, *zip(*rows, strict=True)))
    notes = [e for e in others if is_annotation_event(e)]
    others = [e for e in others if not is_annotation_event(e)]
    if notes:
        written += await apply_annotation_events(notes, conn)
    if others:
        written += await apply_runbook_events(others, conn)
    passthrough = {
        e.trajectory_id
        for e in calls
        if isinstance(e.data, _COMPLETION_EVENTS) and e.data.mode != MODE_RUNBOOK
    }
    if passthrough:
        status = await conn.execute(_RECOMPUTE_TRAJECTORIES, sorted(passthrough))
        written += rows_written(status)
    runbooks = {
        e.trajectory_id for e in fresh if not is_key_event(e) and not is_annotation_event(e)
    } - passthrough
    if runbooks:
        written += await recompute_runbook_trajectories(runbooks, conn)
    return written


# --- one step's facts -----------------------------------------------------------


@dataclass(slots=True)
class _StepFacts:
    """The winning request-side and end-side events of one step within a batch."""

    request: Event | None = None
    end: Event | None = None


_COMPLETION_EVENTS = (
    CompletionRequested,
    CompletionFinished,
    CompletionFailed,
    CompletionCancelled,
)
CompletionData = CompletionRequested | CompletionFinished | CompletionFailed | CompletionCancelled


def _end_status(data: CompletionData) -> str:
    if isinstance(data, CompletionFinished):
        return "completed"
    if isinstance(data, CompletionFailed):
        return "failed"
    return "cancelled"


def _end_precedence(event: Event) -> tuple[int, datetime, str]:
    assert isinstance(event.data, CompletionFinished | CompletionFailed | CompletionCancelled)
    return (STATUS_RANK[_end_status(event.data)], _utc(event.data.ended_at), event.id)


def _fold(events: Sequence[Event]) -> dict[tuple[str, int], _StepFacts]:
    """Reduce a batch to one row per step with the same precedence the upsert applies
    to stored rows (a set-based INSERT may not touch one row twice)."""
    steps: dict[tuple[str, int], _StepFacts] = {}
    for event in events:
        assert isinstance(event.data, _COMPLETION_EVENTS)
        facts = steps.setdefault((event.trajectory_id, event.data.step_index), _StepFacts())
        if isinstance(event.data, CompletionRequested):
            if facts.request is None or event.id < facts.request.id:
                facts.request = event
        elif facts.end is None or _end_precedence(event) > _end_precedence(facts.end):
            facts.end = event
    return steps


# Columns of the steps table in three groups, by which side of a step owns them.
_KEY = ("trajectory_id", "step_index")
# Set only by a completion.requested event: whether one has been applied, and which.
_REQUEST_SIDE = ("request_event_id",)
# Owned by the request side; until a requested event arrives, the winning end
# event's copy (an end event carries the request itself when none was published).
_IDENTITY = (
    "collection", "task", "mode", "kind", "provider", "model", "started_at",
    "stream", "ingress", "request",
)  # fmt: skip
_END_SIDE = (
    "status", "response", "usage", "latency_ms", "ttft_ms", "ended_at", "error", "end_event_id",
    "cost_usd",
)  # fmt: skip
_COLUMNS = _KEY + _REQUEST_SIDE + _IDENTITY + _END_SIDE
_TYPES = {
    "step_index": "integer",
    "stream": "boolean",
    "latency_ms": "float8",
    "ttft_ms": "float8",
    "started_at": "timestamptz",
    "ended_at": "timestamptz",
    "cost_usd": "numeric",
}
_JSONB = {"request", "response", "usage", "error"}

# The incoming request side wins: there is one and it precedes the stored one.
_REQUEST_WINS = (
    "(EXCLUDED.request_event_id IS NOT NULL AND (s.request_event_id IS NULL"
    ' OR EXCLUDED.request_event_id COLLATE "C" < s.request_event_id))'
)
# The incoming end side wins: there is one and it ranks above the stored one.
_END_WINS = (
    "(EXCLUDED.end_event_id IS NOT NULL AND (s.end_event_id IS NULL"
    " OR (jetty_status_rank(EXCLUDED.status), EXCLUDED.ended_at,"
    ' EXCLUDED.end_event_id COLLATE "C")'
    " > (jetty_status_rank(s.status), s.ended_at, s.end_event_id)))"
)
_IDENTITY_WINS = f"({_REQUEST_WINS} OR (s.request_event_id IS NULL AND {_END_WINS}))"


def _assign(columns: tuple[str, ...], condition: str) -> list[str]:
    return [f"{c} = CASE WHEN {condition} THEN EXCLUDED.{c} ELSE s.{c} END" for c in columns]


_SET = ",\n    ".join(
    _assign(_REQUEST_SIDE, _REQUEST_WINS)
    + _assign(_IDENTITY, _IDENTITY_WINS)
    + _assign(_END_SIDE, _END_WINS)
)
_SELECT = ", ".join(f"u.{c}::jsonb" if c in _JSONB else f"u.{c}" for c in _COLUMNS)
_ARRAYS = ", ".join(f"${i}::{_TYPES.get(c, 'text')}[]" for i, c in enumerate(_COLUMNS, 1))
# One statement per batch: each column array is one parameter.
_UPSERT_STEPS = f"""
INSERT INTO steps AS s ({", ".join(_COLUMNS)})
SELECT {_SELECT}
FROM unnest({_ARRAYS}) AS u({", ".join(_COLUMNS)})
ORDER BY u.trajectory_id, u.step_index
ON CONFLICT (trajectory_id, step_index) DO UPDATE SET
    {_SET}
WHERE s.kind IN ('{STEP_KIND_COMPLETION}', '{STEP_KIND_EMBEDDING}')
    AND ({_REQUEST_WINS} OR {_END_WINS})
"""

# A passthrough trajectory is a pure function of its steps: it has exactly one;
# with several, the first step (lowest index) gives identity, status and timing and
# usage is summed (cost as values.USAGE_AGGREGATES says). Runbook trajectories are
# skipped here (their row comes from the runbooks table, runbook_projection.py):
# those with a runbooks row, and those with a runbook-mode step whose
# runbook.requested has not arrived yet.
_RECOMPUTE_TRAJECTORIES = f"""
INSERT INTO trajectories AS t ({TRAJECTORY_COLUMNS})
SELECT f.trajectory_id, f.collection, f.task, f.mode, f.status, f.model, a.created_at,
       f.ended_at, f.latency_ms, f.ttft_ms,
       a.prompt_tokens, a.completion_tokens, a.total_tokens, f.error, a.cost_usd
FROM (
    SELECT DISTINCT ON (trajectory_id) *
    FROM steps WHERE trajectory_id = ANY($1::text[])
    ORDER BY trajectory_id, step_index
) AS f
JOIN (
    SELECT trajectory_id, min(started_at) AS created_at, {USAGE_AGGREGATES}
    FROM steps WHERE trajectory_id = ANY($1::text[])
    GROUP BY trajectory_id
    HAVING NOT bool_or(mode = '{MODE_RUNBOOK}')
) AS a USING (trajectory_id)
WHERE NOT EXISTS (SELECT 1 FROM runbooks r WHERE r.trajectory_id = f.trajectory_id)
ORDER BY f.trajectory_id
{TRAJECTORY_CONFLICT}
"""


def _step_row(facts: _StepFacts) -> tuple[Any, ...]:
    """One row for :data:`_UPSERT_STEPS`, in :data:`_COLUMNS` order."""
    request, end = facts.request, facts.end
    # Identity from the request side when there is one, else from the end side.
    source = request or end
    assert source is not None
    data = source.data
    assert isinstance(data, _COMPLETION_EVENTS)
    values: dict[str, Any] = {
        "trajectory_id": source.trajectory_id,
        "step_index": data.step_index,
        "collection": source.collection,
        "task": _text(data.task),
        "mode": data.mode,
        "kind": data.kind,
        "provider": _text(data.provider),
        "model": _text(data.model),
        "started_at": _utc(data.received_at),
        "status": "running",
    }
    # The request-side columns of the same source as the identity above: a requested
    # event, or the end event's copy (absent from end events of calls that had one).
    ingress, request_doc = data.ingress, data.request
    values |= {
        "stream": data.stream,
        "ingress": None if ingress is None else _text(ingress),
        "request": None if request_doc is None else _json(request_doc),
    }
    if request is not None:
        values["request_event_id"] = request.id
    if end is not None:
        ended = end.data
        assert isinstance(ended, CompletionFinished | CompletionFailed | CompletionCancelled)
        response: BaseModel | dict[str, Any] = ended.response
        if isinstance(ended, CompletionCancelled):
            # Not an error: the partial output stays, with a note of why it stopped.
            response = ended.response.model_dump(mode="json")
            response |= {"cancelled": True, "cancel_reason": ended.reason}
        if len(ended.attempts) > 1:
            # Retries or fallbacks happened: keep every try with the response (a
            # first-try step needs none, its provider, model and latency say it all).
            if isinstance(response, BaseModel):
                response = response.model_dump(mode="json")
            response |= {"attempts": [a.model_dump(mode="json") for a in ended.attempts]}
        values |= {
            "status": _end_status(ended),
            "response": _json(response),
            "usage": None if ended.usage is None else _json(ended.usage),
            "latency_ms": ended.latency_ms,
            "ttft_ms": ended.ttft_ms,
            "ended_at": _utc(ended.ended_at),
            "error": _json(ended.error) if isinstance(ended, CompletionFailed) else None,
            "end_event_id": end.id,
            # Exact: the event's decimal string, never through float.
            "cost_usd": None if ended.cost_usd is None else Decimal(ended.cost_usd),
        }
    return tuple(values.get(column) for column in _COLUMNS)
