"""Read side of the trajectory projection, for the gateway's query API.

The models are the JSON the API returns (``model_dump(mode="json")``). Both reads
are scoped by collection: another collection's trajectory is indistinguishable
from an unknown one.

Exception tree::

    InvalidQuery (ValueError)   a bad limit or status filter
     └── InvalidCursor          a cursor we did not issue (or for another ordering)
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from shared.db.pool import Executor

Status = Literal["pending", "running", "completed", "failed", "cancelled"]

STATUSES: tuple[str, ...] = ("pending", "running", "completed", "failed", "cancelled")
MAX_LIMIT = 500
_CURSOR_VERSION = "1"


class InvalidQuery(ValueError):
    pass


class InvalidCursor(InvalidQuery):
    pass


class _View(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class UsageView(_View):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class FunctionCallView(_View):
    name: str | None = None
    arguments: str = ""


class ToolCallView(_View):
    """OpenAI's shape, so a client can compare with what it was answered."""

    id: str | None = None
    type: str = "function"
    function: FunctionCallView


class ResponseView(_View):
    content: str | None = None
    tool_calls: list[ToolCallView] = Field(default_factory=list)
    finish_reason: str | None = None
    upstream_id: str | None = None


class ErrorView(_View):
    message: str
    type: str
    code: str | None = None
    param: str | None = None
    status: int | None = None


def _is_empty(value: list[Any]) -> bool:
    return not value


class AttemptView(_View):
    """One upstream try of a step that needed retries or a fallback."""

    provider: str
    model: str
    status: int | None = None
    error: str | None = None
    latency_ms: float = 0.0
    retry_after: float | None = None


class StepView(_View):
    index: int
    kind: str
    request: dict[str, Any] | None = None
    response: ResponseView | None = None
    usage: UsageView | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    provider: str | None = None
    model: str | None = None
    error: ErrorView | None = None
    cost_usd: float | None = None
    # The wire format the call came in as: chat.completions, anthropic.messages,
    # responses, gemini.generateContent...
    ingress: str | None = None
    # Stored with the response when a step needed retries or a fallback; left out of
    # the JSON when the first try answered (most steps).
    attempts: list[AttemptView] = Field(default_factory=list, exclude_if=_is_empty)


class ArtifactView(_View):
    """Files a runbook produced (filled in by the runbook slice; empty for passthrough)."""

    name: str
    url: str | None = None
    size_bytes: int | None = None
    media_type: str | None = None


class TrajectorySummary(_View):
    trajectory_id: str
    collection: str
    task: str
    mode: str
    status: Status
    model: str | None
    created_at: datetime
    completed_at: datetime | None
    latency_ms: float | None
    ttft_ms: float | None
    usage: UsageView | None
    error: ErrorView | None
    # US dollars as a JSON number (docs/events.md): null when unknown, never 0.
    cost_usd: float | None = None


class TrajectoryView(TrajectorySummary):
    steps: list[StepView]
    artifacts: list[ArtifactView] = Field(default_factory=list)


class TrajectoryPage(_View):
    data: list[TrajectorySummary]
    next_cursor: str | None
    has_more: bool


_SUMMARY_COLUMNS = """
    t.trajectory_id, t.collection, t.task, t.mode, t.status, t.model, t.created_at,
    t.completed_at, t.latency_ms, t.ttft_ms, t.prompt_tokens, t.completion_tokens,
    t.total_tokens, t.error::text AS error, t.cost_usd
"""

# One statement, so the trajectory and its steps come from the same snapshot even
# when ``conn_or_pool`` is a pool.
_GET = f"""
SELECT {_SUMMARY_COLUMNS},
    (SELECT coalesce(jsonb_agg(jsonb_build_object(
                'index', s.step_index, 'kind', s.kind, 'request', s.request,
                'response', s.response, 'usage', s.usage, 'latency_ms', s.latency_ms,
                'ttft_ms', s.ttft_ms, 'provider', s.provider, 'model', s.model,
                'error', s.error, 'cost_usd', s.cost_usd, 'ingress', s.ingress)
                ORDER BY s.step_index),
                '[]'::jsonb)
     FROM steps s WHERE s.trajectory_id = t.trajectory_id)::text AS steps
FROM trajectories t
WHERE t.trajectory_id = $1 AND t.collection = $2
"""


async def get_trajectory(
    conn_or_pool: Executor, collection: str, trajectory_id: str
) -> TrajectoryView | None:
    """The trajectory with its steps, or ``None`` if unknown *or of another collection*."""
    row = await conn_or_pool.fetchrow(_GET, trajectory_id, collection)
    if row is None:
        return None
    steps = [_step(raw) for raw in orjson.loads(row["steps"])]
    return TrajectoryView(**_summary_fields(row), steps=steps, artifacts=[])


async def list_trajectories(
    pool: Executor,
    collection: str,
    *,
    task: str | None = None,
    status: str | None = None,
    model: str | None = None,
    since: datetime | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> TrajectoryPage:
    """One page of ``collection``'s trajectories, newest first (created_at, then
    trajectory_id, descending). Each filter is served by an index; ``cursor`` is the
    ``next_cursor`` of the previous page and keeps its filters' meaning."""
    query, args = build_list_query(
        collection, task=task, status=status, model=model, since=since, limit=limit, cursor=cursor
    )
    rows = await pool.fetch(query, *args)
    has_more = len(rows) > limit
    page = [TrajectorySummary(**_summary_fields(r)) for r in rows[:limit]]
    next_cursor = encode_cursor(page[-1].created_at, page[-1].trajectory_id) if has_more else None
    return TrajectoryPage(data=page, next_cursor=next_cursor, has_more=has_more)


def build_list_query(
    collection: str,
    *,
    task: str | None = None,
    status: str | None = None,
    model: str | None = None,
    since: datetime | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[str, list[Any]]:
    """The SQL and arguments :func:`list_trajectories` runs (public so its plan can
    be checked); fetches ``limit + 1`` rows to know whether there is a next page."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidQuery(f"limit must be between 1 and {MAX_LIMIT}")
    clauses = ["t.collection = $1"]
    args: list[Any] = [collection]

    def bind(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if task is not None:
        clauses.append(f"t.task = {bind(task)}")
    if status is not None:
        if status not in STATUSES:
            raise InvalidQuery(f"status must be one of {', '.join(STATUSES)}")
        clauses.append(f"t.status = {bind(status)}")
    if model is not None:
        clauses.append(f"t.model = {bind(model)}")
    if since is not None:
        clauses.append(f"t.created_at >= {bind(_aware(since))}")
    if cursor is not None:
        after_time, after_id = decode_cursor(cursor)
        # Row comparison: matches the (created_at DESC, trajectory_id DESC) indexes.
        clauses.append(f"(t.created_at, t.trajectory_id) < ({bind(after_time)}, {bind(after_id)})")
    query = (
        f"SELECT {_SUMMARY_COLUMNS} FROM trajectories t WHERE {' AND '.join(clauses)}"
        f" ORDER BY t.created_at DESC, t.trajectory_id DESC LIMIT {bind(limit + 1)}"
    )
    return query, args


def encode_cursor(created_at: datetime, trajectory_id: str) -> str:
    raw = orjson.dumps([_CURSOR_VERSION, _aware(created_at).isoformat(), trajectory_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        version, moment, trajectory_id = orjson.loads(raw)
        if version != _CURSOR_VERSION or not isinstance(trajectory_id, str):
            raise InvalidCursor("unknown cursor version")
        created_at = datetime.fromisoformat(moment)
    except (binascii.Error, orjson.JSONDecodeError, TypeError, ValueError) as exc:
        if isinstance(exc, InvalidCursor):
            raise
        raise InvalidCursor("invalid cursor") from exc
    if created_at.tzinfo is None:
        raise InvalidCursor("invalid cursor")
    return created_at, trajectory_id


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _summary_fields(row: Any) -> dict[str, Any]:
    usage = None
    if row["total_tokens"] is not None or row["prompt_tokens"] is not None:
        usage = UsageView(
            prompt_tokens=row["prompt_tokens"] or 0,
            completion_tokens=row["completion_tokens"] or 0,
            total_tokens=row["total_tokens"] or 0,
        )
    error = row["error"]
    return {
        "trajectory_id": row["trajectory_id"],
        "collection": row["collection"],
        "task": row["task"],
        "mode": row["mode"],
        "status": row["status"],
        "model": row["model"],
        "created_at": row["created_at"],
        "completed_at": row["completed_at"],
        "latency_ms": row["latency_ms"],
        "ttft_ms": row["ttft_ms"],
        "usage": usage,
        "error": None if error is None else ErrorView.model_validate_json(error),
        "cost_usd": _dollars(row["cost_usd"]),
    }


def _dollars(cost: Decimal | None) -> float | None:
    # A cost has at most 12 + 10 digits and in practice under 15 significant ones,
    # so the float's shortest form is the stored decimal (trailing zeros aside).
    return None if cost is None else float(cost)


def _step(raw: dict[str, Any]) -> StepView:
    response = raw.get("response")
    if isinstance(response, dict):
        # Stored flat (the event's ToolCall); shown in OpenAI's nested shape.
        response = {
            **response,
            "tool_calls": [
                {
                    "id": call.get("id"),
                    "type": call.get("type", "function"),
                    "function": {"name": call.get("name"), "arguments": call.get("arguments", "")},
                }
                for call in response.get("tool_calls") or []
            ],
        }
    attempts = response.get("attempts") if isinstance(response, dict) else None
    return StepView.model_validate({**raw, "response": response, "attempts": attempts or []})
