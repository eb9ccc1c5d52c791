"""Routes around a runbook run: cancel it, download its artifacts, and read it by
collection and task (Jetty's ``/api/v1/db/trajectory/...`` route)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import asyncpg
from aiohttp import web
from nats.errors import Error as NatsError

from services.gateway import trajectories
from services.gateway.files import object_store, store_unavailable
from services.gateway.state import GATEWAY, Gateway, auth_of
from shared import subjects
from shared.db import trajectories as queries
from shared.errors import ApiError, NotFound, Unavailable
from shared.events.runbook import TERMINAL_STATUSES, RunbookCancelled
from shared.ids import is_trajectory_id
from shared.objectstore import ObjectStoreError
from shared.runs import RunNotFound, RunState, RunStateError

CANCEL_WAIT = 10.0
_DOWNLOAD_CHUNK = 256 * 1024


class _Ended(Exception):
    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


def _no_run(trajectory_id: str) -> NotFound:
    return NotFound(
        f"No runbook run with id '{trajectory_id}'.", param="trajectory_id", code="not_found"
    )


async def cancel_run(request: web.Request) -> web.Response:
    """Stop a run: a queued one is cancelled at once; a running one's runner kills
    its sandbox (we wait a little for that). 409 if it had already ended."""
    gw = request.app[GATEWAY]
    trajectory_id = request.match_info["trajectory_id"]
    if not is_trajectory_id(trajectory_id):
        raise _no_run(trajectory_id)
    collection = auth_of(request).collection

    def cancel(state: RunState) -> RunState:
        if state.collection != collection:
            raise RunNotFound(trajectory_id)  # another collection's run: as unknown
        if state.status in TERMINAL_STATUSES:
            raise _Ended(state.status)
        if state.status == "pending":
            return state.model_copy(update={"status": "cancelled", "cancel_requested": True})
        return state.model_copy(update={"cancel_requested": True})

    try:
        state = await gw.runs.update(trajectory_id, cancel)
    except _Ended as ended:
        raise ApiError(
            f"Run '{trajectory_id}' has already ended ({ended.status}).",
            status=409,
            code="run_ended",
            param="trajectory_id",
        ) from None
    except RunNotFound:
        raise _no_run(trajectory_id) from None
    except (RunStateError, NatsError, TimeoutError):
        raise Unavailable("Run state unavailable; retry.", code="run_state_unavailable") from None
    if state.status == "cancelled":
        # Still queued: no runner has it, so the gateway records the end itself (a
        # runner that takes it later sees the state and skips it).
        await gw.publisher.publish(
            state.collection,
            trajectory_id,
            RunbookCancelled(task=state.task, ended_at=datetime.now(UTC)),
        )
    else:
        await gw.nc.publish(subjects.RUNBOOK_CANCEL, trajectory_id.encode())
        state = await _wait_terminal(gw, trajectory_id, state)
    done = state.status in TERMINAL_STATUSES
    body = {"trajectory_id": trajectory_id, "status": state.status if done else "cancelling"}
    return web.json_response(body, status=200 if done else 202)


async def _wait_terminal(gw: Gateway, trajectory_id: str, state: RunState) -> RunState:
    deadline = time.monotonic() + CANCEL_WAIT
    delay = 0.05
    while state.status not in TERMINAL_STATUSES and time.monotonic() < deadline:
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)
        try:
            state = await gw.runs.get(trajectory_id) or state
        except (NatsError, TimeoutError):
            continue
    return state


async def download_artifact(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    collection = auth_of(request).collection
    trajectory_id = request.match_info["trajectory_id"]
    path = request.match_info["path"]
    missing = NotFound(
        f"No artifact '{path}' in trajectory '{trajectory_id}'.", param="path", code="not_found"
    )
    if not is_trajectory_id(trajectory_id):
        raise missing
    pool = await trajectories.open_pool(gw)
    try:
        artifact = await queries.get_artifact(pool, collection, trajectory_id, path)
        if artifact is None and await trajectories.projection_caught_up(gw):
            # Read-your-writes: the run's last events may still be on their way.
            artifact = await queries.get_artifact(pool, collection, trajectory_id, path)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise trajectories.db_unavailable(exc) from None
    if artifact is None:
        raise missing
    store = await object_store(gw)
    if request.query.get("presign") in ("1", "true"):
        # A short-lived URL straight to the object store, for clients that would
        # rather not stream through the gateway (or hand the link on).
        ttl = timedelta(seconds=gw.settings.artifact_url_ttl)
        url = store.presigned_get(artifact.key, ttl)
        expires_at = datetime.now(UTC) + ttl
        return web.json_response(
            {"path": artifact.path, "url": url, "expires_at": expires_at.isoformat()}
        )
    response = web.StreamResponse(
        headers={
            "Content-Type": artifact.content_type,
            "Content-Length": str(artifact.size),
            "Content-Disposition": f"attachment; filename*=UTF-8''{_quote(path)}",
            "ETag": f'"{artifact.sha256}"',
        }
    )
    try:
        chunks = store.iter_chunks(artifact.key, _DOWNLOAD_CHUNK)
        first = await anext(chunks, b"")
    except ObjectStoreError as exc:
        raise store_unavailable(exc) from None
    await response.prepare(request)
    await response.write(first)
    async for chunk in chunks:
        await response.write(chunk)
    await response.write_eof()
    return response


def _quote(path: str) -> str:
    return quote(path.rsplit("/", 1)[-1])


async def get_by_task(request: web.Request) -> web.Response:
    """``GET /api/v1/db/trajectory/{collection}/{task}/{trajectory_id}``: the same
    document as ``GET /api/v1/trajectories/{id}``, addressed the way Jetty's
    database route is; another collection (or a task that is not the run's) is 404."""
    collection = request.match_info["collection"]
    task = request.match_info["task"]
    trajectory_id = request.match_info["trajectory_id"]
    if collection != auth_of(request).collection:
        raise trajectories.not_found(trajectory_id)
    view = await trajectories.read_trajectory(request.app[GATEWAY], collection, trajectory_id)
    if view.task != task:
        raise trajectories.not_found(trajectory_id)
    return trajectories.view_response(request, view)


def routes() -> list[web.RouteDef]:
    return [
        web.post("/api/v1/trajectories/{trajectory_id}/cancel", cancel_run),
        web.get(
            "/api/v1/trajectories/{trajectory_id}/artifacts/{path:[\\s\\S]+}", download_artifact
        ),
        web.get("/api/v1/db/trajectory/{collection}/{task}/{trajectory_id}", get_by_task),
    ]
