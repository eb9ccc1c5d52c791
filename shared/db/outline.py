"""Read side for pages that show a trajectory a piece at a time (the console).

The same projection and the same view models as :mod:`shared.db.trajectories`;
what differs is how much of each step one read carries:

* :func:`get_outline` is the trajectory with its steps' *summaries*: numbers,
  names, and the first :data:`PREVIEW_CHARS` characters of what was said; no
  request body, no tool input, no full tool output. A 2,000-step run is read in
  one statement of a few hundred kilobytes at most.
* :func:`get_step` is one step whole, as the JSON API shows it.
* :func:`task_summaries` aggregates a collection's tasks over a period.

Every read is scoped by collection, as the API's are.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING

import orjson

from shared.db import trajectories as base
from shared.db.trajectories import StepView, TrajectoryView

if TYPE_CHECKING:
    from shared.db.pool import Executor

PREVIEW_CHARS = 280

_OUTLINE_FIELDS = f"""
    'index', s.step_index, 'kind', s.kind, 'usage', s.usage, 'latency_ms', s.latency_ms,
    'ttft_ms', s.ttft_ms, 'provider', s.provider, 'model', s.model,
    'error', s.error, 'cost_usd', s.cost_usd, 'ingress', s.ingress,
    'response', CASE WHEN jsonb_typeof(s.response) = 'object' THEN jsonb_build_object(
        'content', left(s.response->>'content', {PREVIEW_CHARS}),
        'finish_reason', s.response->'finish_reason',
        'tool_calls', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                           'id', c->'id', 'name', c->'name')), '[]'::jsonb)
                       FROM jsonb_array_elements(CASE
                           WHEN jsonb_typeof(s.response->'tool_calls') = 'array'
                           THEN s.response->'tool_calls' ELSE '[]'::jsonb END) c))
    END
"""

# The agent step's detail without its bulky parts: the text cut to a preview, and
# of the tool's input only the file it names (which links an artifact to the call
# that wrote it); the rest loads with the step's body.
_OUTLINE_DETAIL = f"""
    ((coalesce(s.detail, '{{}}'::jsonb) - 'text' - 'tool_input')
     || jsonb_strip_nulls(jsonb_build_object(
            'text', left(s.detail->>'text', {PREVIEW_CHARS}),
            'tool_input', CASE WHEN jsonb_typeof(s.detail->'tool_input') = 'object' THEN
                jsonb_strip_nulls(jsonb_build_object(
                    'file_path', s.detail->'tool_input'->'file_path',
                    'path', s.detail->'tool_input'->'path',
                    'absolute_path', s.detail->'tool_input'->'absolute_path'))
            END)))
"""

_OUTLINE = base.get_query(_OUTLINE_FIELDS, _OUTLINE_DETAIL)

_STEP = """
SELECT (jsonb_build_object({fields}) {runbook_keys})::text AS step
FROM steps s
WHERE s.trajectory_id = $1 AND s.collection = $2 AND s.step_index = $3
"""


async def get_outline(
    conn_or_pool: Executor, collection: str, trajectory_id: str
) -> TrajectoryView | None:
    """The trajectory as :func:`shared.db.trajectories.get_trajectory` reads it,
    but each step without its bodies (``request`` is None, texts are previews)."""
    row = await conn_or_pool.fetchrow(_OUTLINE, trajectory_id, collection)
    return None if row is None else base.view_of_row(row)


async def get_step(
    conn_or_pool: Executor, collection: str, trajectory_id: str, index: int
) -> StepView | None:
    """One step whole (request, response, tool input and output), or ``None`` if
    there is no such step *or the trajectory is of another collection*."""
    query = _STEP.format(
        fields=base._STEP_FIELDS,
        runbook_keys=base._RUNBOOK_STEP_KEYS.format(detail=base._DETAIL),
    )
    raw = await conn_or_pool.fetchval(query, trajectory_id, collection, index)
    return None if raw is None else base._step(orjson.loads(raw))


@dataclass(frozen=True, slots=True)
class TaskSummary:
    task: str
    trajectories: int
    failed: int
    last_activity: datetime
    total_tokens: int
    cost_usd: Decimal | None

    @property
    def failure_rate(self) -> float:
        return self.failed / self.trajectories if self.trajectories else 0.0


async def task_summaries(
    conn_or_pool: Executor, collection: str, since: datetime, limit: int = 200
) -> list[TaskSummary]:
    """Each task with a trajectory since ``since``: how many, how many failed, the
    latest, tokens and cost; the most recently active first."""
    rows = await conn_or_pool.fetch(
        """
        SELECT task, count(*) AS trajectories,
               count(*) FILTER (WHERE status = 'failed') AS failed,
               max(created_at) AS last_activity,
               coalesce(sum(total_tokens), 0) AS total_tokens,
               sum(cost_usd) AS cost_usd
        FROM trajectories
        WHERE collection = $1 AND created_at >= $2
        GROUP BY task ORDER BY max(created_at) DESC LIMIT $3
        """,
        collection,
        since,
        limit,
    )
    return [TaskSummary(**dict(r.items())) for r in rows]


async def find_steps(
    conn_or_pool: Executor, collection: str, trajectory_id: str, text: str
) -> list[int]:
    """The indexes of the trajectory's steps whose content (request, response,
    the agent's text, tool input and output, error) contains ``text``, any case."""
    pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    rows = await conn_or_pool.fetch(
        """
        SELECT step_index FROM steps
        WHERE trajectory_id = $1 AND collection = $2
          AND concat_ws(' ', request::text, response::text, detail::text, error::text)
              ILIKE $3
        ORDER BY step_index
        """,
        trajectory_id,
        collection,
        pattern,
    )
    return [r["step_index"] for r in rows]
