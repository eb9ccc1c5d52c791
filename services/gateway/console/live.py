"""Live parts of the console, over Server-Sent Events (htmx's SSE extension).

``GET /ui/trajectories/{id}/live`` follows one trajectory: it subscribes (core
NATS) to the collection's events, and each event of this trajectory wakes it; it
then waits (bounded) for the recorder to have projected what was published, reads
the trajectory's outline and sends one ``update`` message: the new spine rows (the
page appends them) and, swapped out of band by id, the rows that changed, the
pending row, the header, the timeline and the artifacts. Each message's id is
the highest step index sent, so a browser that reconnects with ``Last-Event-ID``
gets only what it has not seen (``?after=`` gives the page's starting point).
A ``done`` message ends a trajectory that reached its end; the page closes the
stream then.

``GET /ui/trajectories/live?id=…`` does the same for the running rows of a list.
Nothing here polls: between events the stream only sends a keep-alive comment
(and, while the recorder is behind, looks again every half second until it has
caught up).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import quote

import aiohttp_jinja2
import asyncpg
from aiohttp import web
from nats.aio.msg import Msg

from services.gateway import trajectories
from services.gateway.console import spine
from services.gateway.console.guard import session_of
from services.gateway.console.pages import SPINE_PAGE, TIMELINE_INLINE, more_query
from services.gateway.state import GATEWAY, Gateway, auth_of
from shared import subjects
from shared.db import outline
from shared.db import trajectories as queries
from shared.db.trajectories import TrajectoryView
from shared.errors import Unavailable
from shared.ids import is_trajectory_id

log = logging.getLogger(__name__)

KEEPALIVE_S = 15.0
RECHECK_S = 0.5
TERMINAL = frozenset({"completed", "failed", "cancelled"})
MAX_LIST_IDS = 50
SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def _frame(event: str, data: str, event_id: int | None = None) -> bytes:
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines += [f"data: {line}" for line in data.splitlines() or [""]]
    return ("\n".join(lines) + "\n\n").encode()


class _Wake:
    """Set by each event that names one of ``ids``; waited on by the stream."""

    def __init__(self, ids: list[str]) -> None:
        self.event = asyncio.Event()
        self._markers = [b'"trajectory_id":"' + i.encode() + b'"' for i in ids]

    async def on_message(self, msg: Msg) -> None:
        if any(m in msg.data for m in self._markers):
            self.event.set()

    async def wait(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.event.wait(), timeout)
        except TimeoutError:
            return False
        self.event.clear()
        return True


def _after(request: web.Request) -> int:
    raw = request.headers.get("Last-Event-ID") or request.query.get("after") or "-1"
    try:
        return int(raw)
    except ValueError:
        return -1


def _render(request: web.Request, template: str, context: dict[str, Any]) -> str:
    env = aiohttp_jinja2.get_env(request.app)
    return env.get_template(template).render(request=request, **context)


def update_html(request: web.Request, view: TrajectoryView, after: int) -> str:
    """The new rows (appended) and every changed part (out of band, by id)."""
    rows, pending = spine.rows(view)
    bars, span_ms = spine.timeline(view)
    common = {"t": view, "trajectory_id": view.trajectory_id, "hits": set(), "oob": True}
    parts = []
    for row in rows:
        if row.last_index <= after:
            continue
        known = row.head is not None and row.head.index <= after
        parts.append(_render(request, "_row.html", common | {"row": row, "oob": known}))
    parts.append(_render(request, "_pending.html", common | {"pending": pending}))
    if view.mode == "runbook":
        last = max((s.index for s in view.steps), default=-1)
        chat = {"rows": rows[:SPINE_PAGE], "more": more_query(rows, 0, last), "first": None}
        parts.append(_render(request, "_conversation.html", common | chat))
    parts.append(_render(request, "_summary.html", common | {"csrf": session_of(request).csrf}))
    jumps = {
        "errors": [r.dom_id for r in rows if r.failed],
        "costly": spine.most_expensive(rows + ([pending] if pending else [])),
    }
    parts.append(_render(request, "_jumps.html", common | jumps))
    if len(bars) <= TIMELINE_INLINE:  # a longer one loads on demand, not on every step
        parts.append(
            _render(request, "_timeline.html", common | {"bars": bars, "span_ms": span_ms})
        )
    parts.append(_render(request, "_artifacts.html", common | {"quote": quote}))
    return "\n".join(parts)


async def _stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    return response


async def follow(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    collection = auth_of(request).collection
    trajectory_id = request.match_info["trajectory_id"]
    view = await trajectories.read_trajectory(gw, collection, trajectory_id, outline.get_outline)
    after = _after(request)
    wake = _Wake([trajectory_id])
    sub = await gw.nc.subscribe(subjects.collection_events(collection), cb=wake.on_message)
    response = await _stream(request)
    try:
        while True:
            last = max((s.index for s in view.steps), default=-1)
            await response.write(_frame("update", update_html(request, view, after), last))
            after = max(after, last)
            if view.status in TERMINAL:
                await response.write(_frame("done", view.status, after))
                break
            while not await wake.wait(KEEPALIVE_S):
                await response.write(b": keep-alive\n\n")
            caught_up = await trajectories.projection_caught_up(gw)
            fresh = await _reread(gw, collection, trajectory_id)
            view = fresh or view
            if not caught_up or fresh is None:
                # The recorder is behind: what woke us may not be readable yet, and
                # no further event need come; look again shortly.
                asyncio.get_running_loop().call_later(RECHECK_S, wake.event.set)
    except ConnectionResetError:
        log.debug("console live stream of %s closed by the browser", trajectory_id)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return response


async def _reread(gw: Gateway, collection: str, trajectory_id: str) -> TrajectoryView | None:
    """The outline now, or None while the store cannot be read (the stream stays
    open and tries again)."""
    try:
        pool = await trajectories.open_pool(gw)
        return await outline.get_outline(pool, collection, trajectory_id)
    except (OSError, asyncpg.PostgresError, TimeoutError, Unavailable) as exc:
        log.warning("console live read of %s failed: %s", trajectory_id, exc.__class__.__name__)
        return None


async def follow_rows(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    collection = auth_of(request).collection
    ids = [i for i in request.query.getall("id", []) if is_trajectory_id(i)][:MAX_LIST_IDS]
    wake = _Wake(ids)
    sub = await gw.nc.subscribe(subjects.collection_events(collection), cb=wake.on_message)
    response = await _stream(request)
    try:
        while ids:
            while not await wake.wait(KEEPALIVE_S):
                await response.write(b": keep-alive\n\n")
            if not await trajectories.projection_caught_up(gw):
                asyncio.get_running_loop().call_later(RECHECK_S, wake.event.set)
            page = await queries.list_trajectories(
                await trajectories.open_pool(gw), collection, ids=ids, limit=len(ids)
            )
            html = "\n".join(
                _render(request, "_list_row.html", {"r": r, "oob": True}) for r in page.data
            )
            await response.write(_frame("rows", html))
            ids = [r.trajectory_id for r in page.data if r.status not in TERMINAL]
        await response.write(_frame("done", "all ended"))
    except ConnectionResetError:
        log.debug("console list stream closed by the browser")
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return response
