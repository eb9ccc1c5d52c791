"""Queries behind the Jetty-parity routes (docs/jetty-parity.md): a run's
artifacts, labels, archive state, Jetty's paged list and its stats."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from shared.db.trajectories import (
    SUMMARY_COLUMNS,
    ArtifactRecord,
    TrajectorySummary,
    summary_fields,
)

Executor = Any  # an asyncpg pool or connection


async def list_artifacts(db: Executor, collection: str, trajectory_id: str) -> list[ArtifactRecord]:
    rows = await db.fetch(
        """
        SELECT trajectory_id, collection, task, path, key, size, sha256, content_type,
               stored_at
        FROM artifacts WHERE trajectory_id = $1 AND collection = $2
        ORDER BY path COLLATE "C"
        """,
        trajectory_id,
        collection,
    )
    return [ArtifactRecord(**dict(row.items())) for row in rows]


_NOT_ARCHIVED = (
    "NOT EXISTS (SELECT 1 FROM archives a WHERE a.trajectory_id = t.trajectory_id AND a.archived)"
)
_ONLY_ARCHIVED = _NOT_ARCHIVED.removeprefix("NOT ")


def _archived_clause(archived: bool | None) -> str:
    if archived is None:
        return "true"
    return _ONLY_ARCHIVED if archived else _NOT_ARCHIVED


async def page_by_task(
    db: Executor,
    collection: str,
    task: str,
    *,
    limit: int,
    page: int,
    archived: bool | None = False,
) -> tuple[list[TrajectorySummary], int]:
    """Jetty's offset pages of one task, newest first; (page, total)."""
    where = f"t.collection = $1 AND t.task = $2 AND {_archived_clause(archived)}"
    total = await db.fetchval(
        f"SELECT count(*) FROM trajectories t WHERE {where}", collection, task
    )
    rows = await db.fetch(
        f"SELECT {SUMMARY_COLUMNS} FROM trajectories t WHERE {where}"
        " ORDER BY t.created_at DESC, t.trajectory_id DESC LIMIT $3 OFFSET $4",
        collection,
        task,
        limit,
        (page - 1) * limit,
    )
    return [TrajectorySummary(**summary_fields(r)) for r in rows], int(total)


async def task_stats(
    db: Executor, collection: str, task: str, since: datetime | None
) -> dict[str, Any]:
    """Counts by status, tokens, cost and latency percentiles of one task's
    trajectories created since ``since`` (archived ones included: they happened)."""
    row = await db.fetchrow(
        """
        SELECT count(*) AS total,
               count(*) FILTER (WHERE status = 'pending') AS pending,
               count(*) FILTER (WHERE status = 'running') AS running,
               count(*) FILTER (WHERE status = 'completed') AS completed,
               count(*) FILTER (WHERE status = 'failed') AS failed,
               count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
               count(*) FILTER (WHERE EXISTS (SELECT 1 FROM archives a
                   WHERE a.trajectory_id = t.trajectory_id AND a.archived)) AS archived,
               coalesce(sum(prompt_tokens), 0)::bigint AS prompt_tokens,
               coalesce(sum(completion_tokens), 0)::bigint AS completion_tokens,
               coalesce(sum(total_tokens), 0)::bigint AS total_tokens,
               sum(cost_usd) AS cost_usd,
               count(*) FILTER (WHERE cost_usd IS NULL AND status = 'completed') AS unpriced,
               avg(latency_ms) AS latency_avg,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS p50,
               percentile_cont(0.9) WITHIN GROUP (ORDER BY latency_ms) AS p90,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS p95,
               percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms) AS p99,
               min(created_at) AS first_at, max(created_at) AS last_at
        FROM trajectories t
        WHERE collection = $1 AND task = $2 AND ($3::timestamptz IS NULL OR created_at >= $3)
        """,
        collection,
        task,
        since,
    )
    assert row is not None
    cost: Decimal | None = row["cost_usd"]

    def ms(value: float | None) -> float | None:
        return None if value is None else round(float(value), 3)

    return {
        "total": row["total"],
        "by_status": {
            s: row[s] for s in ("pending", "running", "completed", "failed", "cancelled")
        },
        "archived": row["archived"],
        "tokens": {
            "prompt": row["prompt_tokens"],
            "completion": row["completion_tokens"],
            "total": row["total_tokens"],
        },
        "cost_usd": None if cost is None else float(cost),
        "unpriced": row["unpriced"],
        "latency_ms": {
            "avg": ms(row["latency_avg"]),
            "p50": ms(row["p50"]),
            "p90": ms(row["p90"]),
            "p95": ms(row["p95"]),
            "p99": ms(row["p99"]),
        },
        "first_at": row["first_at"],
        "last_at": row["last_at"],
    }


async def routine_runs(
    db: Executor, collection: str, routine_id: str, limit: int
) -> list[dict[str, Any]]:
    """The runs a routine started, newest first."""
    rows = await db.fetch(
        """
        SELECT r.trajectory_id, r.status, r.requested_at, r.ended_at,
               (r.extra->'routine'->>'slot')::float8 AS slot
        FROM runbooks r
        WHERE r.collection = $1 AND r.extra->'routine'->>'routine_id' = $2
        ORDER BY r.requested_at DESC NULLS LAST, r.trajectory_id DESC
        LIMIT $3
        """,
        collection,
        routine_id,
        limit,
    )
    return [dict(row.items()) for row in rows]
