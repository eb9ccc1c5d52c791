"""The console's middleware: who is signed in, CSRF, security headers, HTML errors.

Runs for paths under ``/ui`` only (the API's token middleware skips them). A page
without a valid session redirects to the sign-in page; a fragment or the live
stream answers 401. Every POST carries the session's CSRF secret in its form (or
the ``X-CSRF-Token`` header) and, when the browser sends one, a same-origin
``Origin``. Errors render as an HTML page with the same status the API would
answer: another collection's trajectory is the same 404 as an unknown id.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from urllib.parse import quote, urlsplit

import aiohttp_jinja2
from aiohttp import web
from aiohttp.typedefs import Handler

from services.gateway.console.sessions import Session, SessionStore, csrf_ok, token_of_session
from services.gateway.state import AUTH, GATEWAY
from shared.errors import ApiError

log = logging.getLogger(__name__)

PREFIX = "/ui"
COOKIE = "jetty_console"
SESSION = "jetty.console.session"
SESSIONS = web.AppKey("console_sessions", SessionStore)
PUBLIC = (f"{PREFIX}/login", f"{PREFIX}/static/")

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # no-referrer would make Chromium send "Origin: null" on our own form posts.
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def is_console(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def session_of(request: web.Request) -> Session:
    session = request[SESSION]
    assert isinstance(session, Session)
    return session


def sessions(app: web.Application) -> SessionStore:
    return app[SESSIONS]


async def sessions_ctx(app: web.Application) -> AsyncIterator[None]:
    """Registered after the gateway's own lifecycle, so its NATS client exists."""
    gw = app[GATEWAY]
    app[SESSIONS] = SessionStore(gw.js, replicas=gw.settings.stream_replicas)
    yield


def _wants_page(request: web.Request) -> bool:
    return request.method == "GET" and "HX-Request" not in request.headers


async def _authenticate(request: web.Request) -> Session | None:
    session_id = request.cookies.get(COOKIE)
    if not session_id:
        return None
    store = sessions(request.app)
    session = await store.get(session_id)
    if session is None:
        return None
    record = await token_of_session(request.app[GATEWAY].tokens, session)
    if record is None:
        await store.end(session_id)  # the token was revoked or deleted
        return None
    request[AUTH] = record
    request[SESSION] = session
    return session


def _same_origin(request: web.Request) -> bool:
    # The host alone: behind a TLS-terminating proxy the scheme differs.
    origin = request.headers.get("Origin")
    return origin is None or urlsplit(origin).netloc == request.host


async def _check_csrf(request: web.Request, session: Session) -> None:
    sent = request.headers.get("X-CSRF-Token")
    if sent is None and request.content_type == "application/x-www-form-urlencoded":
        sent = str((await request.post()).get("csrf") or "")
    if not csrf_ok(session, sent):
        raise ApiError("This form has expired; reload the page.", status=403, code="csrf")


@web.middleware
async def console_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not is_console(request.path):
        return await handler(request)
    try:
        response = await _guarded(request, handler)
    except web.HTTPException as exc:
        if exc.status < 400:
            exc.headers.update(HEADERS)
            raise
        response = _error_page(request, exc.status, exc.reason)
    except ApiError as exc:
        response = _error_page(request, exc.status, exc.message)
    except (ConnectionResetError, TimeoutError):
        raise
    except Exception:
        log.exception("console error on %s %s", request.method, request.path)
        response = _error_page(request, 500, "Something went wrong on our side.")
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    if not request.path.startswith(f"{PREFIX}/static/"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


async def _guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method == "POST" and not _same_origin(request):
        raise ApiError("Cross-origin form posts are refused.", status=403, code="csrf")
    if request.path.startswith(PUBLIC):
        return await handler(request)
    session = await _authenticate(request)
    if session is None:
        if _wants_page(request):
            target = quote(request.path_qs, safe="/?=&")
            raise web.HTTPSeeOther(f"{PREFIX}/login?next={target}")
        raise ApiError("Signed out: sign in again.", status=401, code="signed_out")
    if request.method == "POST":
        await _check_csrf(request, session)
    return await handler(request)


_TITLES = {401: "Signed out", 403: "Not allowed", 404: "Not found", 409: "Conflict"}


def _error_page(request: web.Request, status: int, message: str) -> web.Response:
    if status >= 500:
        log.warning("console %s %s -> %s", request.method, request.path, status)
    if status == 404:
        message = "There is nothing here, or it belongs to another collection."
    try:
        response = aiohttp_jinja2.render_template(
            "error.html",
            request,
            {"status": status, "title": _TITLES.get(status, "Error"), "message": message},
            status=status,
        )
    except Exception:  # the error page itself must never fail
        log.exception("rendering the console's error page")
        response = web.Response(status=status, text=f"{status}: {message}")
    return response
