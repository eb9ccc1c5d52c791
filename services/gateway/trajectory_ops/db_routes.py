"""Jetty's own database routes, for clients written against it:

* ``GET /api/v1/db/trajectories/{collection}/{task}?limit&page&archived`` →
  ``{trajectories, total, limit, page, has_more}`` (offset pages, newest first;
  ``page`` from 1, ``limit`` 1 to 200, default 20);
* ``GET /api/v1/db/stats/{collection}/{task}?period=1h|24h|7d|30d|all`` (default
  ``7d``, or ``since=``) → counts by status, tokens, cost and latency percentiles.

The collection in the path must be the token's (403 otherwise).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
from aiohttp import web

from services.gateway import trajectories
from services.gateway.state import GATEWAY, auth_of
from shared.db.parity import page_by_task, task_stats
from shared.errors import ApiError, InvalidRequest

PERIODS = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
    "all": None,
}


def _collection(request: web.Request) -> str:
    collection = request.match_info["collection"]
    if collection != auth_of(request).collection:
        raise ApiError(
            f"This API token cannot read collection '{collection}'.",
            status=403,
            error_type="permission_error",
            param="collection",
            code="collection_forbidden",
        )
    return collection


def _int(raw: str | None, name: str, default: int, low: int, high: int) -> int:
    try:
        value = int(raw) if raw is not None else default
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise InvalidRequest(
            f"Invalid value for '{name}': an integer from {low} to {high}.", param=name
        )
    return value


async def list_by_task(request: web.Request) -> web.Response:
    collection = _collection(request)
    task = request.match_info["task"]
    q = request.query
    limit = _int(q.get("limit"), "limit", 20, 1, 200)
    page = _int(q.get("page"), "page", 1, 1, 1_000_000)
    archived = trajectories.parse_archived(q.get("archived"))
    pool = await trajectories.open_pool(request.app[GATEWAY])
    try:
        rows, total = await page_by_task(
            pool, collection, task, limit=limit, page=page, archived=archived
        )
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise trajectories.db_unavailable(exc) from None
    body = {
        "trajectories": [r.model_dump(mode="json") for r in rows],
        "total": total,
        "limit": limit,
        "page": page,
        "has_more": page * limit < total,
    }
    return web.json_response(body)


async def stats(request: web.Request) -> web.Response:
    collection = _collection(request)
    task = request.match_info["task"]
    q = request.query
    period = q.get("period", "7d")
    if "since" in q:
        since: datetime | None = trajectories.parse_since(q["since"])
        period = "custom"
    elif period in PERIODS:
        span = PERIODS[period]
        since = None if span is None else datetime.now(UTC) - span
    else:
        raise InvalidRequest(
            f"Invalid value for 'period': one of {', '.join(PERIODS)}.", param="period"
        )
    pool = await trajectories.open_pool(request.app[GATEWAY])
    try:
        figures = await task_stats(pool, collection, task, since)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise trajectories.db_unavailable(exc) from None
    body = {"collection": collection, "task": task, "period": period, "since": since, **figures}
    return web.Response(
        body=orjson.dumps(body, option=orjson.OPT_UTC_Z), content_type="application/json"
    )


def routes() -> list[web.RouteDef]:
    return [
        web.get("/api/v1/db/trajectories/{collection}/{task}", list_by_task),
        web.get("/api/v1/db/stats/{collection}/{task}", stats),
    ]
