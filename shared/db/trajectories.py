"""Read side of the trajectory projection, for the gateway's query API.

The models are the JSON the API returns (``model_dump(mode="json")``). Every read
is scoped by collection: another collection's trajectory is indistinguishable
from an unknown one. A runbook trajectory's view adds ``agent``, ``runbook`` (the
run's own status detail), ``timing``, its ``artifacts`` and its agent steps; these
are left out of a passthrough trajectory's JSON, which keeps its exact shape.

Exception tree::

    InvalidQuery (ValueError)   a bad limit or status filter
     └── InvalidCursor          a cursor we did not issue (or for another ordering)
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

import orjson
from pydantic import BaseModel, ConfigDict, Field, computed_field

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


class EmbeddingsView(_View):
    """An embedding step's answer: how many vectors of what size (never the vectors)."""

    count: int
    dimensions: int
    encoding_format: str = "float"


class ResponseView(_View):
    content: str | None = None
    tool_calls: list[ToolCallView] = Field(default_factory=list)
    finish_reason: str | None = None
    upstream_id: str | None = None
    # Embedding steps only (left out of the JSON otherwise).
    embeddings: EmbeddingsView | None = Field(default=None, exclude_if=lambda v: v is None)


class ErrorView(_View):
    message: str
    type: str
    code: str | None = None
    param: str | None = None
    status: int | None = None


def _is_empty(value: list[Any]) -> bool:
    return not value


def _is_false(value: object) -> bool:
    return value is False


def _is_none(value: object) -> bool:
    return value is None


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
    # Steps of a runbook only (left out of the JSON otherwise): the step's status
    # and times, and for the agent's own steps (kind message / tool_call /
    # tool_result) what the agent said or did.
    status: Status | None = Field(default=None, exclude_if=_is_none)
    started_at: datetime | None = Field(default=None, exclude_if=_is_none)
    ended_at: datetime | None = Field(default=None, exclude_if=_is_none)
    text: str | None = Field(default=None, exclude_if=_is_none)
    tool_name: str | None = Field(default=None, exclude_if=_is_none)
    tool_call_id: str | None = Field(default=None, exclude_if=_is_none)
    tool_input: dict[str, Any] | None = Field(default=None, exclude_if=_is_none)
    is_error: bool | None = Field(default=None, exclude_if=_is_none)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def origin(self) -> Literal["gateway", "agent"]:
        """Who says this step happened. ``gateway``: a model call the gateway made
        itself (the audit record: its request, answer, usage and cost were seen,
        not told). ``agent``: the agent's own account of its messages and tool
        calls, read from its output — what it reports, not what was observed."""
        return "gateway" if self.kind in ("completion", "embedding") else "agent"


class ArtifactView(_View):
    """A file a runbook produced (none for passthrough). ``url`` is where the
    client downloads it; the gateway fills it in (:func:`with_artifact_urls`)."""

    #: the file name (last part of ``path``)
    name: str
    #: relative to the run's workspace: ``results/summary.md``
    path: str
    url: str | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    media_type: str | None = None


class RunbookView(_View):
    """A runbook's own status detail, beside the trajectory's summary fields."""

    agent: str | None
    status: Status
    requested_at: datetime | None
    started_at: datetime | None
    #: when the agent process itself started inside the sandbox
    agent_started_at: datetime | None
    ended_at: datetime | None
    #: the agent's final answer, as it reported it
    result: str | None
    exit_code: int | None
    num_turns: int | None
    #: the agent's own usage figures (informational; ``usage`` is the recorded calls')
    reported_usage: dict[str, int]
    file_paths: list[str]
    budget: dict[str, Any] | None
    timeout_s: float | None
    runner: str | None
    backend: str | None
    sandbox_id: str | None
    #: why a cancelled run stopped
    cancel_reason: str | None
    error: ErrorView | None
    #: workspace paths the result shows first (front matter or jetty.primary_outputs)
    primary_outputs: list[str] = Field(default_factory=list)
    #: where the agent came from: request, front_matter or model (inferred)
    agent_source: str | None = None
    #: the stored file the runbook was read from (jetty.runbook_path)
    runbook_path: str | None = Field(default=None, exclude_if=_is_none)
    #: files-API inputs: ``{path, key, file_id}`` each
    inputs: list[dict[str, Any]] = Field(default_factory=list, exclude_if=_is_empty)
    #: ``{routine_id, slot}`` when a routine started the run
    routine: dict[str, Any] | None = Field(default=None, exclude_if=_is_none)
    #: ``{verdict, rounds, checks, history}`` when the runbook has an evaluation
    evaluation: dict[str, Any] | None = Field(default=None, exclude_if=_is_none)


class TimingView(_View):
    """Where a runbook's time went, in milliseconds (None until both ends are known)."""

    #: requested -> started (waiting for a runner)
    queued_ms: float | None
    #: started -> ended (sandbox, agent, collecting artifacts)
    run_ms: float | None
    #: agent process start -> ended
    agent_ms: float | None
    #: requested -> ended
    total_ms: float | None


class LabelView(_View):
    key: str
    value: str
    author: str | None
    at: datetime


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
    # A runbook's agent (the list reads it; left out of the JSON when None).
    agent: str | None = Field(default=None, exclude_if=_is_none)
    # Left out of the JSON when empty / false, like the other optional parts.
    labels: list[LabelView] = Field(default_factory=list, exclude_if=_is_empty)
    #: hidden from lists unless asked for (``?archived=true``); kept whole
    archived: bool = Field(default=False, exclude_if=_is_false)


class TrajectoryView(TrajectorySummary):
    steps: list[StepView]
    artifacts: list[ArtifactView] = Field(default_factory=list)
    #: the artifacts named by the run's primary_outputs, in that order (also in
    #: ``artifacts``); runbooks only
    primary_outputs: list[ArtifactView] = Field(default_factory=list, exclude_if=_is_empty)
    # Runbooks only; left out of a passthrough trajectory's JSON.
    agent: str | None = Field(default=None, exclude_if=_is_none)
    runbook: RunbookView | None = Field(default=None, exclude_if=_is_none)
    timing: TimingView | None = Field(default=None, exclude_if=_is_none)


@dataclass(frozen=True, slots=True)
class ArtifactRecord:
    """Where an artifact's bytes are, for the download route."""

    trajectory_id: str
    collection: str
    task: str
    path: str
    #: the object's key in the bucket
    key: str
    size: int
    sha256: str
    content_type: str
    stored_at: datetime


class TrajectoryPage(_View):
    data: list[TrajectorySummary]
    next_cursor: str | None
    has_more: bool


_SUMMARY_COLUMNS = """
    t.trajectory_id, t.collection, t.task, t.mode, t.status, t.model, t.created_at,
    t.completed_at, t.latency_ms, t.ttft_ms, t.prompt_tokens, t.completion_tokens,
    t.total_tokens, t.error::text AS error, t.cost_usd,
    (SELECT jsonb_agg(jsonb_build_object('key', l.key, 'value', l.value, 'author', l.author,
                                         'at', l.at) ORDER BY l.key)
     FROM labels l WHERE l.trajectory_id = t.trajectory_id AND NOT l.removed)::text AS labels,
    coalesce((SELECT a.archived FROM archives a WHERE a.trajectory_id = t.trajectory_id),
             false) AS archived
"""

_AGENT = "(SELECT r.agent FROM runbooks r WHERE r.trajectory_id = t.trajectory_id) AS agent"

# Extra keys of a runbook's steps: status and times, and the agent step's detail.
_DETAIL = "coalesce(s.detail, '{}'::jsonb)"
_RUNBOOK_STEP_KEYS = """
    || CASE WHEN s.mode = 'runbook' THEN jsonb_strip_nulls(jsonb_build_object(
            'status', s.status,
            'started_at', to_char(s.started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
            'ended_at', to_char(s.ended_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')))
            || {detail}
       ELSE '{{}}'::jsonb END
"""

# A step as the API shows it: every column, bodies included.
_STEP_FIELDS = """
    'index', s.step_index, 'kind', s.kind, 'request', s.request,
    'response', s.response, 'usage', s.usage, 'latency_ms', s.latency_ms,
    'ttft_ms', s.ttft_ms, 'provider', s.provider, 'model', s.model,
    'error', s.error, 'cost_usd', s.cost_usd, 'ingress', s.ingress
"""


def get_query(step_fields: str = _STEP_FIELDS, detail: str = _DETAIL) -> str:
    """The statement :func:`get_trajectory` runs, with ``step_fields`` (pairs for
    ``jsonb_build_object`` over ``steps s``) as each step's object; the console's
    outline passes a lighter set (and a trimmed ``detail``). One statement, so
    the trajectory, its steps, its run and its artifacts come from the same
    snapshot even on a pool."""
    return f"""
SELECT {_SUMMARY_COLUMNS},
    (SELECT coalesce(jsonb_agg(jsonb_build_object({step_fields})
                {_RUNBOOK_STEP_KEYS.format(detail=detail)}
                ORDER BY s.step_index),
                '[]'::jsonb)
     FROM steps s WHERE s.trajectory_id = t.trajectory_id)::text AS steps,
    (SELECT coalesce(jsonb_agg(jsonb_build_object(
                'path', a.path, 'size_bytes', a.size, 'sha256', a.sha256,
                'media_type', a.content_type)
                ORDER BY a.path COLLATE "C"),
                '[]'::jsonb)
     FROM artifacts a WHERE a.trajectory_id = t.trajectory_id)::text AS artifacts,
    r.trajectory_id IS NOT NULL AS is_runbook, r.agent AS run_agent, r.status AS run_status,
    r.requested_at AS run_requested_at, r.started_at AS run_started_at,
    r.agent_started_at AS run_agent_started_at, r.ended_at AS run_ended_at,
    r.outcome::text AS run_outcome, r.file_paths::text AS run_file_paths,
    r.budget::text AS run_budget, r.timeout_s AS run_timeout_s, r.runner AS run_runner,
    r.backend AS run_backend, r.sandbox_id AS run_sandbox_id,
    r.cancel_reason AS run_cancel_reason, r.error::text AS run_error,
    r.extra::text AS run_extra,
    (SELECT jsonb_agg(jsonb_build_object('round', e.round, 'passed', e.passed,
                                         'will_retry', e.will_retry, 'checks', e.checks,
                                         'evaluated_at', e.evaluated_at) ORDER BY e.round)
     FROM evaluations e WHERE e.trajectory_id = t.trajectory_id)::text AS run_evaluations
FROM trajectories t
LEFT JOIN runbooks r ON r.trajectory_id = t.trajectory_id
WHERE t.trajectory_id = $1 AND t.collection = $2
"""


_GET = get_query()


async def get_trajectory(
    conn_or_pool: Executor, collection: str, trajectory_id: str
) -> TrajectoryView | None:
    """The trajectory with its steps (and, for a runbook, its run, timing and
    artifacts), or ``None`` if unknown *or of another collection*."""
    row = await conn_or_pool.fetchrow(_GET, trajectory_id, collection)
    return None if row is None else view_of_row(row)


async def get_artifact(
    conn_or_pool: Executor, collection: str, trajectory_id: str, path: str
) -> ArtifactRecord | None:
    """One artifact of a trajectory by its workspace path, or ``None`` if there is
    no such file *or the trajectory is of another collection*."""
    row = await conn_or_pool.fetchrow(
        """
        SELECT trajectory_id, collection, task, path, key, size, sha256, content_type,
               stored_at
        FROM artifacts WHERE trajectory_id = $1 AND path = $2 AND collection = $3
        """,
        trajectory_id,
        path,
        collection,
    )
    return None if row is None else ArtifactRecord(**dict(row.items()))


def with_artifact_urls(view: TrajectoryView, base: str | Callable[[str], str]) -> TrajectoryView:
    """``view`` with every artifact's ``url`` set: ``base`` + ``/`` + the path
    (percent-encoded, slashes kept), or ``base(path)`` when it is a function (a
    presigned URL, say)."""
    if not view.artifacts:
        return view

    def url(path: str) -> str:
        if callable(base):
            return base(path)
        return f"{base.rstrip('/')}/{quote(path, safe='/')}"

    artifacts = [a.model_copy(update={"url": url(a.path)}) for a in view.artifacts]
    primary = [a.model_copy(update={"url": url(a.path)}) for a in view.primary_outputs]
    return view.model_copy(update={"artifacts": artifacts, "primary_outputs": primary})


def view_of_row(row: Any) -> TrajectoryView:
    """The view of one row of :func:`get_query`'s statement."""
    steps = [_step(raw) for raw in orjson.loads(row["steps"])]
    artifacts = [
        ArtifactView(name=raw["path"].rsplit("/", 1)[-1], **raw)
        for raw in orjson.loads(row["artifacts"])
    ]
    fields = _summary_fields(row)
    if not row["is_runbook"]:
        return TrajectoryView(**fields, steps=steps, artifacts=artifacts)
    run = _runbook(row)
    by_path = {a.path: a for a in artifacts}
    return TrajectoryView(
        **fields,
        steps=steps,
        artifacts=artifacts,
        primary_outputs=[by_path[p] for p in run.primary_outputs if p in by_path],
        agent=run.agent,
        runbook=run,
        timing=TimingView(
            queued_ms=_ms(run.requested_at, run.started_at),
            run_ms=_ms(run.started_at, run.ended_at),
            agent_ms=_ms(run.agent_started_at, run.ended_at),
            total_ms=_ms(run.requested_at, run.ended_at),
        ),
    )


def _runbook(row: Any) -> RunbookView:
    outcome = orjson.loads(row["run_outcome"]) if row["run_outcome"] else {}
    error = row["run_error"]
    extra = orjson.loads(row["run_extra"]) if row["run_extra"] else {}
    return RunbookView(
        agent=row["run_agent"],
        status=row["run_status"],
        requested_at=row["run_requested_at"],
        started_at=row["run_started_at"],
        agent_started_at=row["run_agent_started_at"],
        ended_at=row["run_ended_at"],
        result=outcome.get("result"),
        exit_code=outcome.get("exit_code"),
        num_turns=outcome.get("num_turns"),
        reported_usage=outcome.get("reported_usage") or {},
        file_paths=orjson.loads(row["run_file_paths"]) if row["run_file_paths"] else [],
        budget=orjson.loads(row["run_budget"]) if row["run_budget"] else None,
        timeout_s=row["run_timeout_s"],
        runner=row["run_runner"],
        backend=row["run_backend"],
        sandbox_id=row["run_sandbox_id"],
        cancel_reason=row["run_cancel_reason"],
        error=None if error is None else ErrorView.model_validate_json(error),
        primary_outputs=extra.get("primary_outputs") or [],
        agent_source=extra.get("agent_source"),
        runbook_path=extra.get("runbook_path"),
        inputs=extra.get("inputs") or [],
        routine=extra.get("routine"),
        evaluation=evaluation_summary(orjson.loads(row["run_evaluations"] or "null")),
    )


def _ms(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start) / timedelta(milliseconds=1)


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
    labels: Sequence[tuple[str, str]] = (),
    archived: bool | None = False,
    **more: Any,
) -> TrajectoryPage:
    """One page of ``collection``'s trajectories, newest first (created_at, then
    trajectory_id, descending). Each filter is served by an index; ``cursor`` is the
    ``next_cursor`` of the previous page and keeps its filters' meaning."""
    query, args = build_list_query(
        collection,
        task=task,
        status=status,
        model=model,
        since=since,
        limit=limit,
        cursor=cursor,
        labels=labels,
        archived=archived,
        **more,
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
    labels: Sequence[tuple[str, str]] = (),
    archived: bool | None = False,
    mode: str | None = None,
    agent: str | None = None,
    until: datetime | None = None,
    min_cost: Decimal | None = None,
    id_prefix: str | None = None,
    ids: list[str] | None = None,
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
    for key, value in labels:
        clauses.append(
            "EXISTS (SELECT 1 FROM labels l WHERE l.trajectory_id = t.trajectory_id"
            f" AND l.key = {bind(key)} AND l.value = {bind(value)} AND NOT l.removed)"
        )
    if archived is not None:
        # Archived trajectories are hidden unless asked for (None: both).
        clauses.append(
            ("" if archived else "NOT ")
            + "EXISTS (SELECT 1 FROM archives a WHERE a.trajectory_id = t.trajectory_id"
            " AND a.archived)"
        )
    # The console's filters (migration 009 indexes mode and agent).
    if mode is not None:
        clauses.append(f"t.mode = {bind(mode)}")
    if agent is not None:
        clauses.append(
            "t.trajectory_id IN (SELECT r.trajectory_id FROM runbooks r"
            f" WHERE r.collection = $1 AND r.agent = {bind(agent)})"
        )
    if until is not None:
        clauses.append(f"t.created_at < {bind(_aware(until))}")
    if min_cost is not None:
        clauses.append(f"t.cost_usd >= {bind(min_cost)}")
    if ids is not None:
        clauses.append(f"t.trajectory_id = ANY({bind(ids)}::text[])")
    if id_prefix is not None:
        # A prefix of the id: matched on the collection's rows in list order.
        clauses.append(f"t.trajectory_id LIKE {bind(_like_prefix(id_prefix))}")
    if cursor is not None:
        after_time, after_id = decode_cursor(cursor)
        # Row comparison: matches the (created_at DESC, trajectory_id DESC) indexes.
        clauses.append(f"(t.created_at, t.trajectory_id) < ({bind(after_time)}, {bind(after_id)})")
    query = (
        f"SELECT {_SUMMARY_COLUMNS}, {_AGENT} FROM trajectories t WHERE {' AND '.join(clauses)}"
        f" ORDER BY t.created_at DESC, t.trajectory_id DESC LIMIT {bind(limit + 1)}"
    )
    return query, args


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


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
        "labels": [LabelView(**raw) for raw in orjson.loads(row["labels"])]
        if row["labels"]
        else [],
        "archived": row["archived"],
        **({"agent": row.get("agent")} if row.get("agent") else {}),
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


# For other query modules (shared/db/parity.py) that list trajectory summaries.
SUMMARY_COLUMNS = _SUMMARY_COLUMNS
summary_fields = _summary_fields


def evaluation_summary(history: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """A run's evaluation as the API shows it: the last round decides the verdict."""
    if not history:
        return None
    last = history[-1]
    return {
        "verdict": "passed" if last["passed"] else "failed",
        "rounds": len(history),
        "checks": last["checks"],
        "history": history,
    }
