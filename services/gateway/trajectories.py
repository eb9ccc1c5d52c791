"""Query API: ``GET /api/v1/trajectories`` and ``GET /api/v1/trajectories/{id}``.

Reads the Postgres projection. Right after a completion the recorder may not
have applied its events yet, so a miss waits (bounded) while the recorder still
has unprocessed events, instead of answering a false 404.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiohttp import web
from multidict import MultiMapping
from nats.js.errors import NotFoundError

from services.gateway.state import GATEWAY, Gateway, auth_of
from shared import subjects
from shared.db import trajectories as queries
from shared.db.pool import create_pool
from shared.db.trajectories import TrajectoryView
from shared.errors import InvalidRequest, NotFound, Unavailable
from shared.ids import is_trajectory_id, trajectory_id_time

log = logging.getLogger(__name__)

STATUSES = frozenset({"pending", "running", "completed", "failed", "cancelled"})
TERMINAL = frozenset({"completed", "failed", "cancelled"})
MAX_LIMIT = 200


async def open_pool(gw: Gateway) -> asyncpg.Pool:
    # Created lazily: the chat path must work while Postgres is down.
    if gw.pool is None:
        try:
            gw.pool = await create_pool(
                gw.settings.database_url,
                max_size=gw.settings.db_pool_max,
                command_timeout=10,
                application_name="jetty-gateway",
            )
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise db_unavailable(exc) from None
    return gw.pool


def db_unavailable(exc: BaseException) -> Unavailable:
    log.warning("trajectory store unavailable: %s", exc.__class__.__name__)
    return Unavailable(
        "The trajectory store is unavailable; please retry shortly.",
        code="store_unavailable",
        retry_after=1,
    )


async def projection_caught_up(gw: Gateway) -> bool:
    """Wait (bounded) until the recorder has committed every event that was in the
    stream when we started waiting; False if it did not get there in time."""
    deadline = time.monotonic() + gw.settings.consistency_wait
    try:
        stream = await gw.js.stream_info(subjects.EVENTS_STREAM)
        target = stream.state.last_seq
        delay = 0.002
        while True:
            info = await gw.js.consumer_info(
                subjects.EVENTS_STREAM, subjects.RECORDER_DURABLE, timeout=1.0
            )
            if info.ack_floor is not None and (info.ack_floor.stream_seq or 0) >= target:
                return True
            if time.monotonic() + delay > deadline:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
    except NotFoundError:
        return False  # no recorder has attached yet: nothing is projected
    except Exception as exc:
        log.warning("cannot read recorder progress: %s", exc.__class__.__name__)
        return False


Loader = Callable[[asyncpg.Pool, str, str], Awaitable[TrajectoryView | None]]


async def _load(
    gw: Gateway, collection: str, trajectory_id: str, load: Loader = queries.get_trajectory
) -> TrajectoryView | None:
    pool = await open_pool(gw)
    try:
        return await load(pool, collection, trajectory_id)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise db_unavailable(exc) from None


async def get_trajectory(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "otlp"):
        raise InvalidRequest("Invalid value for 'format': json or otlp.", param="format")
    view = await read_trajectory(
        gw, auth_of(request).collection, request.match_info["trajectory_id"]
    )
    if fmt == "otlp":
        from services.gateway.export import otlp_response  # export imports this module

        return otlp_response(view)
    return view_response(request, view)


def view_response(request: web.Request, view: TrajectoryView) -> web.Response:
    """The trajectory's JSON, with its artifacts' download URLs."""
    gw = request.app[GATEWAY]
    base = gw.settings.public_url or str(request.url.origin())
    view = queries.with_artifact_urls(
        view, f"{base}/api/v1/trajectories/{view.trajectory_id}/artifacts"
    )
    return web.Response(body=view.model_dump_json(), content_type="application/json")


async def read_trajectory(
    gw: Gateway, collection: str, trajectory_id: str, load: Loader = queries.get_trajectory
) -> TrajectoryView:
    """The trajectory as the API shows it, read-your-writes; 404 / 503 as errors.
    ``load`` reads it (the console passes its outline read)."""
    if not is_trajectory_id(trajectory_id):
        raise not_found(trajectory_id)
    view = await _load(gw, collection, trajectory_id, load)
    if view is None:
        view = await _wait_if_fresh(gw, collection, trajectory_id, load)
    if view is None or view.status not in TERMINAL:
        # Read-your-writes: events published before this request (the end of the
        # call the client just saw) may still be on their way to Postgres.
        caught_up = await projection_caught_up(gw)
        view = await _load(gw, collection, trajectory_id, load)
        if view is None:
            if not caught_up:
                raise Unavailable(
                    "The trajectory store is catching up; retry shortly.",
                    code="projection_lagging",
                    retry_after=1,
                )
            raise not_found(trajectory_id)
    return view


async def _wait_if_fresh(
    gw: Gateway, collection: str, trajectory_id: str, load: Loader
) -> TrajectoryView | None:
    """An id made moments ago names a call whose first event may still be on its
    way (a proxy publishes a quick call's only event when it ends): wait for it,
    bounded by the id's age, rather than answer 404 for an id we just handed out."""
    deadline = trajectory_id_time(trajectory_id) + gw.settings.fresh_id_window
    delay = 0.01
    while time.time() < deadline:
        await asyncio.sleep(min(delay, max(0.0, deadline - time.time())))
        delay = min(delay * 2, 0.1)
        view = await _load(gw, collection, trajectory_id, load)
        if view is not None:
            return view
    return None


def not_found(trajectory_id: str) -> NotFound:
    return NotFound(
        f"No trajectory with id '{trajectory_id}'.", param="trajectory_id", code="not_found"
    )


def parse_since(raw: str) -> datetime:
    try:
        if raw.replace(".", "", 1).isdigit():
            return datetime.fromtimestamp(float(raw), UTC)
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        raise InvalidRequest(
            "Invalid value for 'since': use an ISO 8601 time or epoch seconds.", param="since"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_labels(raw: list[str]) -> list[tuple[str, str]]:
    """``?label=key:value`` (repeatable: all must match)."""
    out = []
    for item in raw:
        key, sep, value = item.partition(":")
        if not sep or not key:
            raise InvalidRequest(
                "Invalid value for 'label': use key:value.", param="label", code="invalid_value"
            )
        out.append((key, value))
    return out


def parse_archived(raw: str | None) -> bool | None:
    """``?archived=``: absent/false hides archived trajectories, true shows only
    them, all shows both."""
    if raw is None or raw == "false":
        return False
    if raw == "true":
        return True
    if raw == "all":
        return None
    raise InvalidRequest(
        "Invalid value for 'archived': true, false or all.", param="archived", code="invalid_value"
    )


def list_filters(q: MultiMapping[str], *, default_limit: int, max_limit: int) -> dict[str, Any]:
    """The list filters of a query string (``task``, ``status``, ``model``,
    ``since``, ``limit``, ``label``, ``archived``), validated; 400 naming the bad one."""
    status = q.get("status")
    if status is not None and status not in STATUSES:
        raise InvalidRequest(
            f"Invalid value for 'status': one of {', '.join(sorted(STATUSES))}.", param="status"
        )
    try:
        limit = int(q.get("limit", str(default_limit)))
    except ValueError:
        limit = -1
    if not 1 <= limit <= max_limit:
        raise InvalidRequest(
            f"Invalid value for 'limit': an integer from 1 to {max_limit}.", param="limit"
        )
    since = parse_since(q["since"]) if "since" in q else None
    return {
        "task": q.get("task"),
        "status": status,
        "model": q.get("model"),
        "since": since,
        "limit": limit,
        "labels": parse_labels(q.getall("label", [])),
        "archived": parse_archived(q.get("archived")),
    }


async def list_trajectories(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    collection = auth_of(request).collection
    filters = list_filters(request.query, default_limit=50, max_limit=MAX_LIMIT)
    pool = await open_pool(gw)
    try:
        page = await queries.list_trajectories(
            pool, collection, **filters, cursor=request.query.get("cursor")
        )
    except queries.InvalidCursor:
        raise InvalidRequest("Invalid value for 'cursor'.", param="cursor") from None
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise db_unavailable(exc) from None
    return web.Response(body=page.model_dump_json(), content_type="application/json")
