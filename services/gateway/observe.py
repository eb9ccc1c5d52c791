"""The gateway's outermost middleware: request metrics, one access-log line per
request, and the log context (collection, key id, trajectory id, trace id) of
every line written while the request is handled.

The access log names the route template, never the query string, a header or a
body (so no token or key, whatever the wire format puts where). Prometheus labels
are the route template, the method, the status and the ingress format.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from shared import metrics, tracing
from shared.logs import LOG_CONTEXT, bind

access_log = logging.getLogger("jetty.access")

TRAJECTORY_HEADER = "X-Jetty-Trajectory-Id"
ENABLED = web.AppKey("jetty.metrics_enabled", bool)

# Probes are counted but not logged: a kubelet asks every few seconds.
_QUIET = frozenset({"/healthz", "/readyz"})

# Route prefix -> ingress format (the metric label).
_INGRESS = (
    ("/v1/chat/completions", "chat.completions"),
    ("/chat/completions", "chat.completions"),
    ("/v1/messages", "anthropic.messages"),
    ("/v1/responses", "responses"),
    ("/responses", "responses"),
    ("/v1beta/", "gemini"),
    ("/{version", "gemini"),
)


def _ingress(route: str) -> str:
    for prefix, name in _INGRESS:
        if route.startswith(prefix):
            return name
    return "api"


# (route, method, status, ingress) -> the request counter's and the duration
# histogram's children: ``labels()`` hashes and locks on every call, this does not.
_SERIES: dict[tuple[str, str, int, str], tuple[Any, Any]] = {}


def _count(route: str, method: str, status: int, ingress: str, elapsed: float) -> None:
    key = (route, method, status, ingress)
    series = _SERIES.get(key)
    if series is None:
        series = _SERIES[key] = (
            metrics.GATEWAY_REQUESTS.labels(route, method, str(status), ingress),
            metrics.GATEWAY_DURATION.labels(route, ingress),
        )
    series[0].inc()
    series[1].observe(elapsed)


def _route(request: web.Request) -> str:
    info = request.match_info
    resource = info.route.resource if info.route is not None else None
    if resource is None or info.http_exception is not None:
        return "unmatched"
    return resource.canonical


@web.middleware
async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path == "/metrics":
        return await handler(request)
    LOG_CONTEXT.set({})  # a kept-alive connection's task serves many requests
    if tracing.enabled():
        return await _traced(request, handler)
    return await _observed(request, handler)


async def _traced(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The request as a SERVER span continuing the client's ``traceparent``."""
    route = _route(request)
    with tracing.span(
        f"{request.method} {route}",
        kind="SERVER",
        parent=tracing.extract(request.headers),
        http__request__method=request.method,
        http__route=route,
        url__path=request.path,
    ) as current:
        bind(trace_id=format(current.get_span_context().trace_id, "032x"))
        response = await _observed(request, handler)
        current.set_attribute("http.response.status_code", response.status)
        trajectory = response.headers.get(TRAJECTORY_HEADER)
        if trajectory:
            current.set_attribute("jetty.trajectory_id", trajectory)
        if response.status >= 500:
            tracing.set_error(current, str(response.status), "server error")
        return response


async def _observed(request: web.Request, handler: Handler) -> web.StreamResponse:
    start = time.perf_counter()
    status = 500
    response: web.StreamResponse | None = None
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        elapsed = time.perf_counter() - start
        route = _route(request)
        ingress = _ingress(route)
        if request.app.get(ENABLED, True):
            _count(route, request.method, status, ingress, elapsed)
        if request.path not in _QUIET and access_log.isEnabledFor(logging.INFO):
            trajectory = response.headers.get(TRAJECTORY_HEADER) if response is not None else None
            context = LOG_CONTEXT.get() or {}
            if trajectory and "trajectory_id" not in context:
                LOG_CONTEXT.set({**context, "trajectory_id": trajectory})
            access_log.info(
                "%s %s %d %.1fms",
                request.method,
                route,
                status,
                elapsed * 1000,
                extra={
                    "method": request.method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                    "ingress": ingress,
                },
            )
