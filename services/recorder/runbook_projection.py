"""The runbook half of the projection: runbook events -> ``runbooks``, agent
``steps``, ``artifacts``, and the ``trajectories`` row of each runbook.

Same invariants as :mod:`services.recorder.projection` (which calls this inside its
transaction): idempotent by the event ids on its rows, independent of
arrival order and batch split, no wall clock, one statement per table per batch.

* ``runbooks``: three sides, each kept by a fixed precedence (see the migration
  ``003_runbooks.sql``): the request (smaller event id), the start (later
  ``started_at``, then larger id) and the end (``jetty_status_rank``, then later
  ``ended_at``, then larger id). The status is a generated column: the end's
  status if there is one, else ``running`` once started, else ``pending``.
* Agent steps (``runbook.step``) are whole in one event: a step row of kind
  ``message`` / ``tool_call`` / ``tool_result``; if two events claim one index, the
  smaller event id wins. They never replace a completion step (the shared per-run
  counter means the two kinds do not meet on one index).
* ``artifacts``: one row per path; the later ``stored_at``, then the larger id.
* A runbook's ``trajectories`` row exists once its ``runbook.requested`` is known:
  identity, status, timing and error from the ``runbooks`` row, usage and cost
  summed over its completion steps (the agent's model calls).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from services.recorder.values import (
    STATUS_RANK,
    TRAJECTORY_COLUMNS,
    TRAJECTORY_CONFLICT,
    USAGE_AGGREGATES,
    Event,
    json,
    rows_written,
    text,
    utc,
    utc_opt,
)
from shared.events.runbook import (
    ArtifactStored,
    RunbookCancelled,
    RunbookCompleted,
    RunbookEvaluated,
    RunbookFailed,
    RunbookRequested,
    RunbookStarted,
    RunbookStep,
)

if TYPE_CHECKING:
    from shared.db.pool import Connection

MODE_RUNBOOK = "runbook"
RUNBOOK_EVENTS = (
    RunbookRequested,
    RunbookStarted,
    RunbookCompleted,
    RunbookFailed,
    RunbookCancelled,
    RunbookStep,
    ArtifactStored,
    RunbookEvaluated,
)
_ENDED = (RunbookCompleted, RunbookFailed, RunbookCancelled)
_END_STATUS = {
    RunbookCompleted: "completed",
    RunbookFailed: "failed",
    RunbookCancelled: "cancelled",
}


def is_runbook_event(event: Event) -> bool:
    return isinstance(event.data, RUNBOOK_EVENTS)


async def apply_runbook_events(events: Sequence[Event], conn: Connection) -> int:
    """Project runbook-family events; rows written (0: nothing new)."""
    runs: dict[str, _RunFacts] = {}
    steps: dict[tuple[str, int], Event] = {}
    artifacts: dict[tuple[str, str], Event] = {}
    rounds: dict[tuple[str, int], Event] = {}
    for event in events:
        data = event.data
        if isinstance(data, RunbookEvaluated):
            round_key = (event.trajectory_id, data.round)
            if round_key not in rounds or event.id < rounds[round_key].id:
                rounds[round_key] = event
        elif isinstance(data, RunbookStep):
            key = (event.trajectory_id, data.step_index)
            if key not in steps or event.id < steps[key].id:
                steps[key] = event
        elif isinstance(data, ArtifactStored):
            path_key = (event.trajectory_id, data.path)
            if path_key not in artifacts or _stored(event) > _stored(artifacts[path_key]):
                artifacts[path_key] = event
        else:
            runs.setdefault(event.trajectory_id, _RunFacts()).add(event)
    # Key order in every statement, so that concurrent recorders lock rows in the
    # same order and cannot deadlock.
    written = 0
    if runs:
        rows = [_run_row(facts) for _, facts in sorted(runs.items())]
        written += rows_written(await conn.execute(_UPSERT_RUNBOOKS, *zip(*rows, strict=True)))
    if steps:
        rows = [_agent_step_row(event) for _, event in sorted(steps.items())]
        written += rows_written(await conn.execute(_UPSERT_AGENT_STEPS, *zip(*rows, strict=True)))
    if artifacts:
        rows = [_artifact_row(event) for _, event in sorted(artifacts.items())]
        written += rows_written(await conn.execute(_UPSERT_ARTIFACTS, *zip(*rows, strict=True)))
    if rounds:
        rows = [_round_row(event) for _, event in sorted(rounds.items())]
        written += rows_written(await conn.execute(_UPSERT_EVALUATIONS, *zip(*rows, strict=True)))
    return written


_UPSERT_EVALUATIONS = """
INSERT INTO evaluations AS e (trajectory_id, round, collection, passed, will_retry, checks,
                              evaluated_at, event_id)
SELECT u.trajectory_id, u.round, u.collection, u.passed, u.will_retry, u.checks::jsonb,
       u.evaluated_at, u.event_id
FROM unnest($1::text[], $2::integer[], $3::text[], $4::boolean[], $5::boolean[], $6::text[],
            $7::timestamptz[], $8::text[])
     AS u(trajectory_id, round, collection, passed, will_retry, checks, evaluated_at, event_id)
ORDER BY 1, 2
ON CONFLICT (trajectory_id, round) DO UPDATE SET
    passed = EXCLUDED.passed, will_retry = EXCLUDED.will_retry, checks = EXCLUDED.checks,
    evaluated_at = EXCLUDED.evaluated_at, event_id = EXCLUDED.event_id
WHERE EXCLUDED.event_id COLLATE "C" < e.event_id
"""


def _round_row(event: Event) -> tuple[Any, ...]:
    data = event.data
    assert isinstance(data, RunbookEvaluated)
    checks = json([c.model_dump(mode="json") for c in data.checks])
    return (event.trajectory_id, data.round, event.collection, data.passed, data.will_retry,
            checks, utc(data.evaluated_at), event.id)  # fmt: skip


async def recompute_runbook_trajectories(trajectory_ids: Iterable[str], conn: Connection) -> int:
    """Rewrite the ``trajectories`` rows of these runbooks (those whose request is
    known); rows written."""
    return rows_written(await conn.execute(_RECOMPUTE, sorted(set(trajectory_ids))))


# --- runbooks -------------------------------------------------------------------


@dataclass(slots=True)
class _RunFacts:
    """The winning event of each side of one run within a batch."""

    request: Event | None = None
    start: Event | None = None
    end: Event | None = None
    first: list[Event] = field(default_factory=list)

    def add(self, event: Event) -> None:
        data = event.data
        if not self.first or event.id < self.first[0].id:
            self.first[:] = [event]
        if isinstance(data, RunbookRequested):
            if self.request is None or event.id < self.request.id:
                self.request = event
        elif isinstance(data, RunbookStarted):
            if self.start is None or _start_precedence(event) > _start_precedence(self.start):
                self.start = event
        elif self.end is None or _end_precedence(event) > _end_precedence(self.end):
            self.end = event


def _start_precedence(event: Event) -> tuple[datetime, str]:
    assert isinstance(event.data, RunbookStarted)
    return (utc(event.data.started_at), event.id)


def _end_precedence(event: Event) -> tuple[int, datetime, str]:
    assert isinstance(event.data, _ENDED)
    status = _END_STATUS[type(event.data)]
    return (STATUS_RANK[status], utc(event.data.ended_at), event.id)


_RUN_KEY = ("trajectory_id",)
_RUN_IDENTITY = ("collection", "task", "identity_event_id")
_RUN_REQUEST = (
    "agent", "model", "runbook", "prompt", "file_paths", "budget", "timeout_s", "request",
    "requested_at", "requested_event_id", "extra",
)  # fmt: skip
_RUN_START = ("started_at", "runner", "backend", "sandbox_id", "started_event_id")
_RUN_END = (
    "end_status", "ended_at", "agent_started_at", "outcome", "error", "cancel_reason",
    "end_event_id",
)  # fmt: skip
_RUN_COLUMNS = _RUN_KEY + _RUN_IDENTITY + _RUN_REQUEST + _RUN_START + _RUN_END
_TYPES = {
    "step_index": "integer",
    "size": "bigint",
    "timeout_s": "float8",
    "latency_ms": "float8",
    "requested_at": "timestamptz",
    "started_at": "timestamptz",
    "ended_at": "timestamptz",
    "agent_started_at": "timestamptz",
    "stored_at": "timestamptz",
}
_JSONB = {"file_paths", "budget", "request", "outcome", "error", "detail", "extra"}

_REQUEST_WINS = (
    "(EXCLUDED.requested_event_id IS NOT NULL AND (r.requested_event_id IS NULL"
    ' OR EXCLUDED.requested_event_id COLLATE "C" < r.requested_event_id))'
)
# Before any request: the smallest event id seen names the run's collection and task.
_IDENTITY_WINS = (
    f"({_REQUEST_WINS} OR (r.requested_event_id IS NULL AND EXCLUDED.requested_event_id IS NULL"
    ' AND EXCLUDED.identity_event_id COLLATE "C" < r.identity_event_id))'
)
_START_WINS = (
    "(EXCLUDED.started_event_id IS NOT NULL AND (r.started_event_id IS NULL"
    ' OR (EXCLUDED.started_at, EXCLUDED.started_event_id COLLATE "C")'
    " > (r.started_at, r.started_event_id)))"
)
_END_WINS = (
    "(EXCLUDED.end_event_id IS NOT NULL AND (r.end_event_id IS NULL"
    " OR (jetty_status_rank(EXCLUDED.end_status), EXCLUDED.ended_at,"
    ' EXCLUDED.end_event_id COLLATE "C")'
    " > (jetty_status_rank(r.end_status), r.ended_at, r.end_event_id)))"
)


def _assign(columns: tuple[str, ...], condition: str) -> list[str]:
    return [f"{c} = CASE WHEN {condition} THEN EXCLUDED.{c} ELSE r.{c} END" for c in columns]


def _unnest(columns: tuple[str, ...]) -> tuple[str, str]:
    """The SELECT list and the ``unnest`` arguments for one array per column."""
    select = ", ".join(f"u.{c}::jsonb" if c in _JSONB else f"u.{c}" for c in columns)
    arrays = ", ".join(f"${i}::{_TYPES.get(c, 'text')}[]" for i, c in enumerate(columns, 1))
    return select, f"unnest({arrays}) AS u({', '.join(columns)})"


_RUN_SELECT, _RUN_FROM = _unnest(_RUN_COLUMNS)
_RUN_SET = ",\n    ".join(
    _assign(_RUN_IDENTITY, _IDENTITY_WINS)
    + _assign(_RUN_REQUEST, _REQUEST_WINS)
    + _assign(_RUN_START, _START_WINS)
    + _assign(_RUN_END, _END_WINS)
)
_UPSERT_RUNBOOKS = f"""
INSERT INTO runbooks AS r ({", ".join(_RUN_COLUMNS)})
SELECT {_RUN_SELECT}
FROM {_RUN_FROM}
ORDER BY u.trajectory_id
ON CONFLICT (trajectory_id) DO UPDATE SET
    {_RUN_SET}
WHERE {_IDENTITY_WINS} OR {_REQUEST_WINS} OR {_START_WINS} OR {_END_WINS}
"""


def _run_row(facts: _RunFacts) -> tuple[Any, ...]:
    identity = facts.request or facts.first[0]
    data = identity.data
    assert isinstance(data, (RunbookRequested, RunbookStarted, *_ENDED))
    values: dict[str, Any] = {
        "trajectory_id": identity.trajectory_id,
        "collection": identity.collection,
        "task": text(data.task),
        "identity_event_id": identity.id,
    }
    if facts.request is not None:
        asked = facts.request.data
        assert isinstance(asked, RunbookRequested)
        values |= {
            "agent": asked.agent,
            "model": text(asked.model),
            "runbook": text(asked.runbook),
            "prompt": text(asked.prompt),
            "file_paths": json(asked.file_paths),
            "budget": json(asked.budget),
            "timeout_s": asked.timeout_s,
            "request": json(asked.request),
            "requested_at": utc(asked.requested_at),
            "requested_event_id": facts.request.id,
            "extra": json(
                asked.model_dump(
                    mode="json",
                    include={
                        "primary_outputs",
                        "agent_source",
                        "runbook_path",
                        "inputs",
                        "routine",
                    },
                )
            ),
        }
    if facts.start is not None:
        started = facts.start.data
        assert isinstance(started, RunbookStarted)
        values |= {
            "started_at": utc(started.started_at),
            "runner": text(started.runner),
            "backend": text(started.backend),
            "sandbox_id": text(started.sandbox_id),
            "started_event_id": facts.start.id,
        }
    if facts.end is not None:
        ended = facts.end.data
        assert isinstance(ended, _ENDED)
        values |= {
            "end_status": _END_STATUS[type(ended)],
            "ended_at": utc(ended.ended_at),
            "agent_started_at": utc_opt(ended.agent_started_at),
            "outcome": json(ended.outcome),
            "error": json(ended.error) if isinstance(ended, RunbookFailed) else None,
            "cancel_reason": text(ended.reason) if isinstance(ended, RunbookCancelled) else None,
            "end_event_id": facts.end.id,
        }
    return tuple(values.get(column) for column in _RUN_COLUMNS)


# --- agent steps ----------------------------------------------------------------

_STEP_COLUMNS = (
    "trajectory_id", "step_index", "collection", "task", "mode", "kind", "status",
    "started_at", "ended_at", "latency_ms", "detail", "end_event_id",
)  # fmt: skip
_STEP_SELECT, _STEP_FROM = _unnest(_STEP_COLUMNS)
_UPSERT_AGENT_STEPS = f"""
INSERT INTO steps AS s ({", ".join(_STEP_COLUMNS)})
SELECT {_STEP_SELECT}
FROM {_STEP_FROM}
ORDER BY u.trajectory_id, u.step_index
ON CONFLICT (trajectory_id, step_index) DO UPDATE SET
    {", ".join(f"{c} = EXCLUDED.{c}" for c in _STEP_COLUMNS[2:])}
WHERE s.kind NOT IN ('completion', 'embedding')
    AND EXCLUDED.end_event_id COLLATE "C" < s.end_event_id
"""


def _agent_step_row(event: Event) -> tuple[Any, ...]:
    step = event.data
    assert isinstance(step, RunbookStep)
    started, ended = utc(step.started_at), utc(step.ended_at)
    detail: dict[str, Any] = {"is_error": step.is_error}
    for name in ("text", "tool_name", "tool_call_id", "tool_input"):
        value = getattr(step, name)
        if value is not None:
            detail[name] = value
    return (
        event.trajectory_id,
        step.step_index,
        event.collection,
        text(step.task),
        MODE_RUNBOOK,
        step.kind,
        "failed" if step.is_error else "completed",
        started,
        ended,
        (ended - started) / timedelta(milliseconds=1),
        json(detail),
        event.id,
    )


# --- artifacts ------------------------------------------------------------------

_ARTIFACT_COLUMNS = (
    "trajectory_id", "path", "collection", "task", "key", "size", "sha256", "content_type",
    "stored_at", "event_id",
)  # fmt: skip
_ARTIFACT_SELECT, _ARTIFACT_FROM = _unnest(_ARTIFACT_COLUMNS)
_UPSERT_ARTIFACTS = f"""
INSERT INTO artifacts AS a ({", ".join(_ARTIFACT_COLUMNS)})
SELECT {_ARTIFACT_SELECT}
FROM {_ARTIFACT_FROM}
ORDER BY u.trajectory_id, u.path
ON CONFLICT (trajectory_id, path) DO UPDATE SET
    {", ".join(f"{c} = EXCLUDED.{c}" for c in _ARTIFACT_COLUMNS[2:])}
WHERE (EXCLUDED.stored_at, EXCLUDED.event_id COLLATE "C") > (a.stored_at, a.event_id)
"""


def _stored(event: Event) -> tuple[datetime, str]:
    assert isinstance(event.data, ArtifactStored)
    return (utc(event.data.stored_at), event.id)


def _artifact_row(event: Event) -> tuple[Any, ...]:
    stored = event.data
    assert isinstance(stored, ArtifactStored)
    return (
        event.trajectory_id,
        text(stored.path),
        event.collection,
        text(stored.task),
        text(stored.key),
        stored.size,
        stored.sha256,
        text(stored.content_type),
        utc(stored.stored_at),
        event.id,
    )


# --- the trajectories row ---------------------------------------------------------

_RECOMPUTE = f"""
INSERT INTO trajectories AS t ({TRAJECTORY_COLUMNS})
SELECT r.trajectory_id, r.collection, r.task, '{MODE_RUNBOOK}', r.status, r.model,
       r.requested_at, r.ended_at,
       (extract(epoch FROM r.ended_at - r.requested_at) * 1000)::float8, NULL::float8,
       a.prompt_tokens, a.completion_tokens, a.total_tokens, r.error, a.cost_usd
FROM runbooks r
LEFT JOIN (
    SELECT trajectory_id, {USAGE_AGGREGATES}
    FROM steps WHERE trajectory_id = ANY($1::text[]) AND kind IN ('completion', 'embedding')
    GROUP BY trajectory_id
) AS a USING (trajectory_id)
WHERE r.trajectory_id = ANY($1::text[]) AND r.requested_event_id IS NOT NULL
ORDER BY r.trajectory_id
{TRAJECTORY_CONFLICT}
"""
