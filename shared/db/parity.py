"""Queries behind the Jetty-parity routes (docs/jetty-parity.md): a run's
artifacts, labels, archive state, Jetty's paged list and its stats."""

from __future__ import annotations

from typing import Any

from shared.db.trajectories import ArtifactRecord

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
