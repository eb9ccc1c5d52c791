"""Authentication and OpenAI-shaped error middlewares."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from services.gateway.state import AUTH, GATEWAY
from shared.errors import ApiError, Unauthorized

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/"})
TRAJECTORY_HEADER = "X-Jetty-Trajectory-Id"


def error_response(exc: ApiError) -> web.Response:
    headers = exc.headers()
    if exc.trajectory_id:
        headers[TRAJECTORY_HEADER] = exc.trajectory_id
    return web.Response(
        status=exc.status, body=exc.to_json(), content_type="application/json", headers=headers
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
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error_type, code = _HTTP_TYPES.get(exc.status, ("invalid_request_error", None))
        message = exc.reason
        if exc.status == 404:
            message = f"Unknown route: {request.method} {request.path}"
        return error_response(
            ApiError(message, status=exc.status, error_type=error_type, code=code)
        )
    except (ConnectionResetError, TimeoutError) as exc:
        log.info("request aborted: %s", exc.__class__.__name__)
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(ApiError("Internal server error.", status=500))


# Each wire format's own way of sending a key, so its SDK or CLI works unchanged:
# OpenAI (Bearer), Anthropic (x-api-key, or Bearer via ANTHROPIC_AUTH_TOKEN),
# Gemini (x-goog-api-key).
_KEY_HEADERS = ("x-api-key", "x-goog-api-key")


def api_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    for name in _KEY_HEADERS:
        value = request.headers.get(name, "").strip()
        if value:
            return value
    return None


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS:
        return await handler(request)
    token = api_token(request)
    if token is None:
        raise Unauthorized(
            "Missing API token: send 'Authorization: Bearer <token>'.", code="missing_api_key"
        )
    record = await request.app[GATEWAY].tokens.resolve(token)
    if record is None:
        raise Unauthorized("Invalid API token.", code="invalid_api_key")
    request[AUTH] = record
    return await handler(request)
