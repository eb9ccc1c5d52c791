"""Authentication and error middlewares.

Errors are OpenAI-shaped unless the request's path belongs to another wire format
that registered its own renderer (:func:`register_error_renderer`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler

from services.gateway import policy, scopes
from services.gateway.state import AUTH, GATEWAY
from shared import metrics
from shared.errors import ApiError, Unauthorized
from shared.logs import bind

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/", "/metrics", "/ui", "/openapi.json", "/docs"})
CONSOLE_PREFIX = "/ui/"
# The API reference page's script and assets (services/gateway/openapi/reference.py).
DOCS_PREFIX = "/docs/"
TRAJECTORY_HEADER = "X-Jetty-Trajectory-Id"


ErrorRenderer = Callable[[ApiError], bytes]
"""Turns an error into the JSON body of its wire format; status and headers
(``Retry-After``, the trajectory id) stay the middleware's."""

# Path prefix -> renderer. An ingress format (Anthropic, Responses, Gemini) registers
# the prefixes it serves so that *every* error on them — including those raised
# before its handler runs (a bad token, an unknown route under the prefix, 405) —
# comes in the shape its SDK parses. Filled at import time by the ingress modules.
_RENDERERS: dict[str, ErrorRenderer] = {}


def register_error_renderer(path_prefix: str, renderer: ErrorRenderer) -> None:
    """Render errors on ``path_prefix`` and the paths below it (``/v1/messages``
    covers ``/v1/messages/count_tokens``, not ``/v1/messagesx``) with ``renderer``.
    The longest registered prefix wins; re-registering a prefix replaces it."""
    _RENDERERS[path_prefix.rstrip("/")] = renderer


def _renderer_for(path: str) -> ErrorRenderer | None:
    best: tuple[int, ErrorRenderer] | None = None
    for prefix, renderer in _RENDERERS.items():
        if (path == prefix or path.startswith(prefix + "/")) and (
            best is None or len(prefix) > best[0]
        ):
            best = (len(prefix), renderer)
    return best[1] if best else None


def error_response(exc: ApiError, path: str | None = None) -> web.Response:
    headers = exc.headers()
    if exc.trajectory_id:
        headers[TRAJECTORY_HEADER] = exc.trajectory_id
    renderer = _renderer_for(path) if path is not None else None
    body = renderer(exc) if renderer is not None else exc.to_json()
    return web.Response(
        status=exc.status, body=body, content_type="application/json", headers=headers
    )


_HTTP_TYPES = {
    404: ("not_found_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
}


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc, request.path)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error_type, code = _HTTP_TYPES.get(exc.status, ("invalid_request_error", None))
        message = exc.reason
        if exc.status == 404:
            message = f"Unknown route: {request.method} {request.path}"
        return error_response(
            ApiError(message, status=exc.status, error_type=error_type, code=code), request.path
        )
    except (ConnectionResetError, TimeoutError) as exc:
        log.info("request aborted: %s", exc.__class__.__name__)
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(ApiError("Internal server error.", status=500), request.path)


# Each wire format's own way of sending a key, so its SDK or CLI works unchanged:
# OpenAI (Bearer), Anthropic (x-api-key, or Bearer via ANTHROPIC_AUTH_TOKEN),
# Gemini (x-goog-api-key).
_KEY_HEADERS = ("x-api-key", "x-goog-api-key")
QUERY_KEY_PREFIX = "/v1beta/"

# What a run-scoped token (the one a runbook's agent holds) may reach: the model
# endpoints of every wire format, nothing else (no files, no trajectories).
RUN_TOKEN_PATHS = (
    "/v1/chat/completions",
    "/chat/completions",
    "/v1/embeddings",
    "/embeddings",
    "/v1/messages",
    "/v1/responses",
    "/v1/models",
    "/v1beta/models",
)


def api_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    for name in _KEY_HEADERS:
        value = request.headers.get(name, "").strip()
        if value:
            return value
    if request.path.startswith(QUERY_KEY_PREFIX):
        # Google's API also takes the key as ``?key=``. Only there: a query string
        # is easily logged (we write no access log, and log paths without queries).
        value = request.query.get("key", "").strip()
        if value:
            return value
    return None


def _grants(granted: tuple[str, ...], needed: tuple[str, ...]) -> bool:
    # Not any(<genexpr>): this runs on every request.
    return not set(needed).isdisjoint(granted)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS or request.path.startswith((CONSOLE_PREFIX, DOCS_PREFIX)):
        # The console signs people in with its own sessions (services/gateway/console);
        # the API reference describes the API and exposes no data.
        return await handler(request)
    token = api_token(request)
    if token is None:
        raise Unauthorized(
            "Missing API token: send 'Authorization: Bearer <token>'.", code="missing_api_key"
        )
    gw = request.app[GATEWAY]
    record = await gw.tokens.resolve(token)
    if record is None:
        raise Unauthorized("Invalid API token.", code="invalid_api_key")
    bind(collection=record.collection, key_id=record.id)
    if record.expires_at is not None and record.expired(policy.time_now()):
        metrics.KEY_REFUSALS.labels("expired").inc()
        raise Unauthorized(
            f"This API key expired at {record.expires_at.isoformat()}.", code="invalid_api_key"
        )
    if record.trajectory_id is not None:
        if not request.path.startswith(RUN_TOKEN_PATHS):
            raise ApiError(
                "This token belongs to a runbook's sandbox: it reaches only the model endpoints.",
                status=403,
                error_type="permission_error",
                code="token_scope",
            )
        request[AUTH] = record
        if record.parent_key_id is not None and scopes.is_model_call(request):
            # The starting key's budget and tokens per minute (copied on the token).
            policy.check_call(gw, request, record)
        return await handler(request)
    request[AUTH] = record
    needed = scopes.default_scopes(request)
    if needed is not None and not _grants(record.scopes, needed):
        metrics.KEY_REFUSALS.labels("scope").inc()
        raise scopes.scope_error(needed)
    if scopes.is_model_call(request):
        policy.check_call(gw, request, record)
    return await handler(request)
