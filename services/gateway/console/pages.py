"""The console's pages: sign-in, tasks, the trajectory list and one trajectory.

Every read goes through the same functions as the JSON API (``shared.db``, and
the gateway's ``read_trajectory`` with its read-your-writes wait); the signed-in
session's token record stands where the API's bearer token does.
"""

from __future__ import annotations

import json
import shlex
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import aiohttp_jinja2
import asyncpg
from aiohttp import web

from services.gateway import trajectories
from services.gateway.console import guard, spine
from services.gateway.console.filters import AGENTS, MODES, PERIODS, BadFilter, ListFilters
from services.gateway.console.sessions import SESSION_TTL_S
from services.gateway.state import GATEWAY, auth_of
from shared.db import outline
from shared.db import trajectories as queries
from shared.db.trajectories import STATUSES, StepView, TrajectoryView
from shared.errors import NotFound

PAGE_SIZE = 50
# Spine rows (and conversation turns) rendered with the page; the rest load as the
# reader scrolls, so a 2,000-step run's first screen stays small.
SPINE_PAGE = 100
# Past this many bars the timeline loads when its tab is first shown.
TIMELINE_INLINE = 300


def _safe_next(raw: str | None) -> str:
    # Only a path inside the console: never an open redirect.
    if raw and raw.startswith("/ui/") and not raw.startswith("//") and "\\" not in raw:
        return raw
    return "/ui/trajectories"


async def login_form(request: web.Request) -> web.Response:
    return aiohttp_jinja2.render_template(
        "login.html", request, {"next": _safe_next(request.query.get("next")), "error": None}
    )


async def login(request: web.Request) -> web.Response:
    form = await request.post()
    token = str(form.get("token") or "").strip()
    target = _safe_next(str(form.get("next") or ""))
    gw = request.app[GATEWAY]
    record = await gw.tokens.resolve(token) if 0 < len(token) <= 512 else None
    if record is None or record.trajectory_id is not None:
        return aiohttp_jinja2.render_template(
            "login.html",
            request,
            {"next": target, "error": "That token is not valid here."},
            status=401,
        )
    session_id, _ = await guard.sessions(request.app).create(token, record)
    response = web.HTTPSeeOther(target)
    response.set_cookie(
        guard.COOKIE,
        session_id,
        path=guard.PREFIX,
        max_age=SESSION_TTL_S,
        httponly=True,
        samesite="Strict",
        secure=request.secure or request.headers.get("X-Forwarded-Proto") == "https",
    )
    raise response


async def logout(request: web.Request) -> web.Response:
    session_id = request.cookies.get(guard.COOKIE, "")
    await guard.sessions(request.app).end(session_id)
    response = web.HTTPSeeOther(f"{guard.PREFIX}/login")
    response.del_cookie(guard.COOKIE, path=guard.PREFIX)
    raise response


async def home(request: web.Request) -> web.Response:
    raise web.HTTPSeeOther(f"{guard.PREFIX}/trajectories")


async def root(request: web.Request) -> web.Response:
    """``GET /``: a browser goes to the console; an API client gets a pointer."""
    if "text/html" in request.headers.get("Accept", ""):
        raise web.HTTPFound(f"{guard.PREFIX}/")
    return web.json_response({"console": f"{guard.PREFIX}/", "api": "/v1"})


def _context(request: web.Request, **more: Any) -> dict[str, Any]:
    session = guard.session_of(request)
    return {"collection": auth_of(request).collection, "csrf": session.csrf, "oob": False, **more}


async def _pool(request: web.Request) -> asyncpg.Pool:
    return await trajectories.open_pool(request.app[GATEWAY])


async def tasks_page(request: web.Request) -> web.Response:
    period = request.query.get("period", "24h")
    if period not in PERIODS:
        period = "24h"
    since = datetime.now(UTC) - PERIODS[period]
    try:
        found = await outline.task_summaries(
            await _pool(request), auth_of(request).collection, since
        )
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise trajectories.db_unavailable(exc) from None
    return aiohttp_jinja2.render_template(
        "tasks.html",
        request,
        _context(request, tasks=found, period=period, periods=list(PERIODS), page="tasks"),
    )


async def list_page(request: web.Request) -> web.Response:
    filters = ListFilters.parse(request.query)
    cursor = request.query.get("cursor") or None
    error = None
    page = queries.TrajectoryPage(data=[], next_cursor=None, has_more=False)
    status = 200
    try:
        kwargs = filters.query_kwargs()
        page = await queries.list_trajectories(
            await _pool(request),
            auth_of(request).collection,
            limit=PAGE_SIZE,
            cursor=cursor,
            **kwargs,
        )
    except BadFilter as exc:
        error, status = str(exc), 400
    except queries.InvalidCursor:
        error, status = "That page link is not valid any more; start again.", 400
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise trajectories.db_unavailable(exc) from None
    context = _context(
        request,
        page_data=page,
        filters=filters,
        error=error,
        statuses=STATUSES,
        modes=MODES,
        agents=AGENTS,
        page="trajectories",
        more_url=filters.url(cursor=page.next_cursor or "") if page.has_more else None,
        running=[t.trajectory_id for t in page.data if t.status in ("pending", "running")],
    )
    if cursor and "HX-Request" in request.headers:
        return aiohttp_jinja2.render_template("_rows.html", request, context)
    return aiohttp_jinja2.render_template("list.html", request, context, status=status)


async def trajectory_page(request: web.Request) -> web.Response:
    view = await _outline(request, request.match_info["trajectory_id"])
    return await _render_trajectory(request, view)


async def permalink(request: web.Request) -> web.Response:
    """The hosted product's URL shape: ``/ui/{collection}/{task}/{id}``."""
    trajectory_id = request.match_info["trajectory_id"]
    if request.match_info["collection"] != auth_of(request).collection:
        raise trajectories.not_found(trajectory_id)
    view = await _outline(request, trajectory_id)
    if view.task != request.match_info["task"]:
        raise trajectories.not_found(trajectory_id)
    return await _render_trajectory(request, view)


async def _outline(request: web.Request, trajectory_id: str) -> TrajectoryView:
    return await trajectories.read_trajectory(
        request.app[GATEWAY], auth_of(request).collection, trajectory_id, outline.get_outline
    )


async def _render_trajectory(request: web.Request, view: TrajectoryView) -> web.Response:
    rows, pending = spine.rows(view)
    find = request.query.get("find", "").strip()[:200]
    hits: set[int] = set()
    if find:
        hits = set(
            await outline.find_steps(
                await _pool(request), view.collection, view.trajectory_id, find
            )
        )
    first = None
    if view.mode != "runbook" and view.steps:
        # One step: the whole of it is small enough to show at once.
        first = await outline.get_step(
            await _pool(request), view.collection, view.trajectory_id, view.steps[0].index
        )
    bars, span_ms = spine.timeline(view)
    costly = spine.most_expensive(rows + ([pending] if pending else []))
    last_index = max((s.index for s in view.steps), default=-1)
    context = _context(
        request,
        t=view,
        rows=rows[:SPINE_PAGE],
        more=more_query(rows, 0, last_index),
        pending=pending,
        bars=bars if len(bars) <= TIMELINE_INLINE else None,
        span_ms=span_ms,
        costly=costly,
        errors=[r.dom_id for r in rows if r.failed],
        first=first,
        curl=_step_curl(request, first),
        find=find,
        hits=hits,
        live=view.status in ("pending", "running"),
        last_index=last_index,
        quote=quote,
        page="trajectory",
    )
    return aiohttp_jinja2.render_template("trajectory.html", request, context)


def more_query(rows: list[spine.Row], start: int, upto: int) -> str | None:
    """The query of the next slice of rows after ``start``, if there is one; ``upto``
    keeps rows that arrive live (appended by the stream) out of later slices."""
    following = [r for r in rows[start + SPINE_PAGE :] if r.last_index <= upto]
    if not following:
        return None
    return f"from={start + SPINE_PAGE}&upto={upto}"


async def more_rows(request: web.Request) -> web.Response:
    """The next slice of the spine (``?view=chat``: of the conversation)."""
    view = await _outline(request, request.match_info["trajectory_id"])
    try:
        start = max(0, int(request.query.get("from", "0")))
        upto = int(request.query.get("upto", "-1"))
    except ValueError:
        raise web.HTTPBadRequest(reason="from and upto are step numbers") from None
    rows, _ = spine.rows(view)
    chunk = [r for r in rows[start : start + SPINE_PAGE] if r.last_index <= upto]
    context = _context(
        request,
        t=view,
        rows=chunk,
        more=more_query(rows, start, upto),
        hits=set(),
        first=None,
        quote=quote,
        page="trajectory",
    )
    template = "_chat_rows.html" if request.query.get("view") == "chat" else "_rows_more.html"
    if "HX-Request" not in request.headers:
        template = "rows_page.html"
    return aiohttp_jinja2.render_template(template, request, context)


async def timeline_part(request: web.Request) -> web.Response:
    view = await _outline(request, request.match_info["trajectory_id"])
    bars, span_ms = spine.timeline(view)
    context = _context(request, t=view, bars=bars, span_ms=span_ms, page="trajectory")
    template = "_timeline.html" if "HX-Request" in request.headers else "timeline_page.html"
    return aiohttp_jinja2.render_template(template, request, context)


_EMBEDDING_FIELDS = ("model", "input", "encoding_format", "dimensions", "user")


def _step_curl(request: web.Request, step: StepView | None) -> str | None:
    """The first step's call as curl: chat, or embeddings when its input was kept."""
    if step is None or not step.request:
        return None
    if step.kind != "embedding":
        return _curl(request, step.request)
    if "input" not in step.request or step.request.get("store") != "full":
        return None
    body = {k: step.request[k] for k in _EMBEDDING_FIELDS if k in step.request}
    return _curl(request, body, "/v1/embeddings")


def _curl(request: web.Request, body: dict[str, Any], path: str = "/v1/chat/completions") -> str:
    base = request.app[GATEWAY].settings.public_url or str(request.url.origin())
    # ASCII-only JSON: the same request, and no bidi or control character can
    # disguise what the command does.
    data = json.dumps(body, indent=2, ensure_ascii=True)
    return (
        f"curl {shlex.quote(base + path)} \\\n"
        '  -H "Authorization: Bearer $JETTY_API_KEY" \\\n'
        "  -H 'Content-Type: application/json' \\\n"
        f"  -d {shlex.quote(data)}"
    )


async def step_body(request: web.Request) -> web.Response:
    trajectory_id = request.match_info["trajectory_id"]
    try:
        index = int(request.match_info["index"])
    except ValueError:
        raise trajectories.not_found(trajectory_id) from None
    try:
        step = await outline.get_step(
            await _pool(request), auth_of(request).collection, trajectory_id, index
        )
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise trajectories.db_unavailable(exc) from None
    if step is None:
        raise NotFound(f"No step {index} in trajectory '{trajectory_id}'.", code="not_found")
    fragment = "HX-Request" in request.headers
    return aiohttp_jinja2.render_template(
        "_step_body.html" if fragment else "step.html",
        request,
        _context(request, step=step, trajectory_id=trajectory_id, page="step"),
    )


async def download_json(request: web.Request) -> web.Response:
    view = await trajectories.read_trajectory(
        request.app[GATEWAY], auth_of(request).collection, request.match_info["trajectory_id"]
    )
    response = trajectories.view_response(request, view)
    response.headers["Content-Disposition"] = f'attachment; filename="{view.trajectory_id}.json"'
    return response
