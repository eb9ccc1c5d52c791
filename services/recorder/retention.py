"""The retention sweeper (``JETTY_RETENTION_DAYS``): deletes projection rows and
artifacts of trajectories created before the cut-off, oldest first, in batches.

Each batch is its own short transaction (``JETTY_RETENTION_BATCH`` trajectories,
default 500): it takes row locks on those trajectories only and never a table
lock, so the projection keeps committing between batches. The stream's own
``max_age`` (set from the same setting by every service) drops the events; the
tombstones older than the cut-off go with them, since nothing can redeliver
those events any more. Artifacts are
removed from the object store after their rows are gone (a removal that fails
is logged; the object has no row pointing at it any more).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from services.recorder.deletion_projection import remove_rows

if TYPE_CHECKING:
    from shared.db.pool import Connection, Pool

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    trajectories: int = 0
    artifacts: int = 0
    batches: int = 0


async def sweep_batch(
    conn: Connection, cutoff: datetime, batch: int
) -> tuple[list[str], list[str]]:
    """Delete up to ``batch`` trajectories older than ``cutoff``; (ids, artifact keys)."""
    async with conn.transaction():
        rows = await conn.fetch(
            """
            SELECT trajectory_id FROM trajectories
            WHERE created_at < $1 ORDER BY created_at LIMIT $2
            FOR UPDATE SKIP LOCKED
            """,
            cutoff,
            batch,
        )
        ids = [r["trajectory_id"] for r in rows]
        if not ids:
            return [], []
        keys = [
            r["key"]
            for r in await conn.fetch(
                "SELECT key FROM artifacts WHERE trajectory_id = ANY($1::text[])", ids
            )
        ]
        await remove_rows(ids, conn)
    return ids, keys


async def sweep(pool: Pool, cutoff: datetime, batch: int = 500, objects: Any = None) -> SweepResult:
    """Sweep everything older than ``cutoff``, batch after batch."""
    result = SweepResult()
    while True:
        async with pool.acquire() as conn:
            ids, keys = await sweep_batch(conn, cutoff, batch)
        if not ids:
            break
        result.trajectories += len(ids)
        result.batches += 1
        if objects is not None:
            for key in keys:
                try:
                    await objects.remove(key)
                    result.artifacts += 1
                except Exception as exc:
                    log.warning("artifact %s not removed: %s", key, exc)
        await asyncio.sleep(0)  # let the projection's commits in between
    async with pool.acquire() as conn:
        await conn.execute("DELETE FROM deleted_trajectories WHERE deleted_at < $1", cutoff)
    return result


async def run_sweeper(
    pool: Pool,
    days: float,
    *,
    interval: float,
    batch: int,
    objects: Any,
    stop: asyncio.Event,
) -> None:
    """Sweep every ``interval`` seconds until ``stop``."""
    while not stop.is_set():
        cutoff = datetime.now(UTC) - timedelta(days=days)
        try:
            result = await sweep(pool, cutoff, batch, objects)
            if result.trajectories:
                log.info(
                    "retention: %d trajectories and %d artifacts older than %s removed",
                    result.trajectories,
                    result.artifacts,
                    cutoff.isoformat(timespec="seconds"),
                )
        except Exception as exc:  # the next round retries
            log.warning("retention sweep failed: %r", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
