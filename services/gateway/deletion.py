"""``DELETE /api/v1/trajectories/{id}`` (an ``api`` or ``admin`` key of its
collection): the trajectory, its artifacts and its bodies go.

1. ``trajectory.deleted`` is published: the recorder removes the rows and keeps
   a tombstone that makes every other event of the trajectory a no-op, in any
   order, on any replay (docs/operations.md, "Data controls").
2. The trajectory's messages are deleted from the JetStream stream (their
   sequences are in ``processed_events``), and so are claim-checked payloads:
   the bodies are gone from the bus too, not only from the projection.
3. Its artifacts are removed from the object store.
4. The answer waits (bounded) until the projection no longer shows it, so a GET
   right after is a 404.

A running trajectory is refused with 409: cancel it first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

import asyncpg
from aiohttp import web
from nats.errors import Error as NatsError

from services.gateway.files import object_store
from services.gateway.state import GATEWAY, Gateway, auth_of
from services.gateway.trajectories import TERMINAL, db_unavailable, open_pool, read_trajectory
from shared import subjects
from shared.errors import ApiError
from shared.events.deletion import TrajectoryDeleted
from shared.objectstore import ObjectStoreError

log = logging.getLogger(__name__)


async def delete_trajectory(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    auth = auth_of(request)
    trajectory_id = request.match_info["trajectory_id"]
    view = await read_trajectory(gw, auth.collection, trajectory_id)
    if view.status not in TERMINAL:
        raise ApiError(
            f"Trajectory '{trajectory_id}' is still {view.status}; cancel it first.",
            status=409,
            error_type="invalid_request_error",
            code="trajectory_running",
        )
    pool = await open_pool(gw)
    try:
        rows = await pool.fetch(
            "SELECT event_id, stream_seq FROM event_positions WHERE trajectory_id = $1",
            trajectory_id,
        )
        keys = [
            r["key"]
            for r in await pool.fetch(
                "SELECT key FROM artifacts WHERE trajectory_id = $1", trajectory_id
            )
        ]
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise db_unavailable(exc) from None
    await gw.publisher.publish(
        auth.collection,
        trajectory_id,
        TrajectoryDeleted(deleted_at=datetime.now(UTC), key_id=auth.id or None),
    )
    await _purge_stream(gw, [r["stream_seq"] for r in rows])
    await _purge_claims(gw, [r["event_id"] for r in rows])
    if keys:
        store = await object_store(gw)
        for key in keys:
            try:
                await store.remove(key)
            except ObjectStoreError as exc:  # the sweeper's prefix pass retries it
                log.warning("artifact of %s not removed: %s", trajectory_id, exc)
    await _wait_gone(gw, pool, trajectory_id)
    return web.json_response({"id": trajectory_id, "object": "trajectory", "deleted": True})


async def _purge_stream(gw: Gateway, sequences: list[int]) -> None:
    for seq in sequences:
        try:
            await gw.js.delete_msg(subjects.EVENTS_STREAM, seq)
        except NatsError as exc:  # already gone (retention), or NATS away: the tombstone holds
            log.info("stream message %d not deleted: %s", seq, exc.__class__.__name__)


async def _purge_claims(gw: Gateway, event_ids: list[str]) -> None:
    """Claim-checked payloads (only large events have one; the rest are misses)."""

    async def drop(event_id: str) -> None:
        with contextlib.suppress(Exception):
            await gw.claims.delete(f"event/{event_id}")

    for start in range(0, len(event_ids), 32):
        await asyncio.gather(*(drop(e) for e in event_ids[start : start + 32]))


async def _wait_gone(gw: Gateway, pool: asyncpg.Pool, trajectory_id: str) -> None:
    deadline = asyncio.get_running_loop().time() + max(gw.settings.consistency_wait, 1.0)
    while asyncio.get_running_loop().time() < deadline:
        try:
            row = await pool.fetchval(
                "SELECT 1 FROM deleted_trajectories WHERE trajectory_id = $1", trajectory_id
            )
        except (OSError, asyncpg.PostgresError, TimeoutError):
            row = None
        if row:
            return
        await asyncio.sleep(0.02)
