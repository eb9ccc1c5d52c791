"""What both projections share: the parsed event and how its values are stored.

Kept apart from :mod:`services.recorder.projection` so that the completion and the
runbook projections can both use it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel

from shared.events.envelope import Envelope
from shared.events.registry import AnyEnvelope, EventData

# Must equal the SQL function jetty_status_rank() (tested): the in-batch folds and
# the upserts against stored rows have to pick the same winner.
STATUS_RANK: dict[str, int] = {
    "pending": 0,
    "running": 1,
    "completed": 2,
    "cancelled": 3,
    "failed": 4,
}


@dataclass(frozen=True, slots=True)
class Event:
    """What the projection uses of an envelope, its payload parsed into the
    registered model."""

    id: str
    type: str
    trajectory_id: str
    collection: str
    time: datetime
    data: EventData

    @classmethod
    def of(cls, envelope: Envelope | AnyEnvelope, data: EventData) -> Event:
        return cls(
            envelope.id,
            envelope.type,
            envelope.trajectory_id,
            envelope.collection,
            envelope.time,
            data,
        )


def rows_written(status: str) -> int:
    """Rows an INSERT / UPDATE / DELETE wrote, from its command tag ("INSERT 0 3").
    An upsert whose WHERE refuses a no-op update does not count that row."""
    return int(status.rsplit(" ", 1)[-1])


def utc(moment: datetime) -> datetime:
    # A naive time from a careless producer is taken as UTC, the same way every time.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def utc_opt(moment: datetime | None) -> datetime | None:
    return None if moment is None else utc(moment)


def text(value: str) -> str:
    # PostgreSQL text cannot hold NUL; an event must not become unstorable over one.
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def text_opt(value: str | None) -> str | None:
    return None if value is None else text(value)


def json(value: Any) -> str:
    """``value`` (a model or plain JSON data) as jsonb input text."""
    if isinstance(value, BaseModel):
        encoded_text = value.model_dump_json()  # one pass, no intermediate dict
        if "\\u0000" not in encoded_text:
            return encoded_text
        value = value.model_dump(mode="json")
    encoded = orjson.dumps(value)
    if b"\\u0000" in encoded:  # jsonb rejects \u0000 too
        encoded = orjson.dumps(_scrub(value))
    return encoded.decode()


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return text(value)
    if isinstance(value, dict):
        return {text(str(k)): _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


# --- the trajectories row, shared by both recomputes ------------------------------

# Usage and cost of a trajectory from its completion steps (grouped by trajectory).
# Cost follows pricing.sum_costs: the exact sum of the steps' costs, NULL if any
# step with usage is unpriced (a partial sum would under-report); steps without
# usage (still running, failed before any token) add nothing, and with no usage at
# all the cost is NULL like the token counts.
USAGE_AGGREGATES = """
           sum((usage->>'prompt_tokens')::bigint) AS prompt_tokens,
           sum((usage->>'completion_tokens')::bigint) AS completion_tokens,
           sum((usage->>'total_tokens')::bigint) AS total_tokens,
           CASE WHEN bool_or(usage IS NOT NULL AND cost_usd IS NULL) THEN NULL
                ELSE sum(cost_usd) END AS cost_usd
"""

TRAJECTORY_COLUMNS = """
    trajectory_id, collection, task, mode, status, model, created_at, completed_at,
    latency_ms, ttft_ms, prompt_tokens, completion_tokens, total_tokens, error, cost_usd
"""

_UPDATED = (
    "collection", "task", "mode", "status", "model", "created_at", "completed_at",
    "latency_ms", "ttft_ms", "prompt_tokens", "completion_tokens", "total_tokens", "error",
    "cost_usd",
)  # fmt: skip

# Every column from the recomputed row; no-op writes (duplicates, replays over
# existing rows) are skipped so they leave no dead tuples.
TRAJECTORY_CONFLICT = (
    "ON CONFLICT (trajectory_id) DO UPDATE SET\n    "
    + ",\n    ".join(f"{c} = EXCLUDED.{c}" for c in _UPDATED)
    + f"\nWHERE ({', '.join(f't.{c}' for c in _UPDATED)})\n    IS DISTINCT FROM\n    ("
    + ", ".join(f"EXCLUDED.{c}" for c in _UPDATED)
    + ")"
)
