"""Prometheus metrics of every service (``prometheus-client``), named and unitised
per the Prometheus conventions (``_total``, ``_seconds``), every label from a
bounded set: a route template, a status class... never a trajectory id, a key, a
token or a free-form model name the client made up (an unroutable model counts as
``unknown``). The catalogue is in docs/operations.md.

Each process registers what it uses in the default registry; :func:`metrics_route`
serves it (the gateway on its own port, the other services on their health port).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

# Latency buckets from a millisecond to ten minutes (model calls are long).
_CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)

# --- gateway ---------------------------------------------------------------------------
GATEWAY_REQUESTS = Counter(
    "jetty_gateway_requests_total",
    "HTTP requests answered by the gateway.",
    ["route", "method", "status", "ingress"],
)
GATEWAY_DURATION = Histogram(
    "jetty_gateway_request_duration_seconds",
    "Time from a request's arrival to its answer's end (streams: the last chunk).",
    ["route", "ingress"],
    buckets=_CALL_BUCKETS,
)
KEY_REFUSALS = Counter(
    "jetty_key_refusals_total",
    "Calls refused by a key's policy, by reason.",
    ["reason"],  # rate_limit_requests, rate_limit_tokens, budget, model, scope, expired
)

# --- proxy -----------------------------------------------------------------------------
CALLS = Counter(
    "jetty_model_calls_total",
    "Model calls recorded by the proxy, by outcome.",
    ["provider", "model", "ingress", "mode", "status"],  # status: finished|failed|cancelled
)
CALL_DURATION = Histogram(
    "jetty_model_call_duration_seconds",
    "Time from the gateway's receipt of a call to its end.",
    ["provider"],
    buckets=_CALL_BUCKETS,
)
TTFT = Histogram(
    "jetty_time_to_first_token_seconds",
    "Time from the gateway's receipt of a call to its first output token.",
    ["provider"],
    buckets=_CALL_BUCKETS,
)
UPSTREAM_ERRORS = Counter(
    "jetty_upstream_errors_total",
    "Failed upstream attempts, by kind (the error type or HTTP status class).",
    ["provider", "kind"],
)
RETRIES = Counter("jetty_retries_total", "Upstream retries of the same target.", ["provider"])
FALLBACKS = Counter(
    "jetty_fallbacks_total", "Calls served or failed by a fallback target.", ["provider"]
)
TOKENS = Counter(
    "jetty_tokens_total", "Tokens used, by direction.", ["provider", "model", "direction"]
)
COST = Counter("jetty_cost_usd_total", "Recorded cost in US dollars.", ["provider", "model"])

# --- every publisher of events -------------------------------------------------------
PUBLISH_SECONDS = Histogram(
    "jetty_nats_publish_duration_seconds",
    "Time for JetStream to acknowledge one event.",
    buckets=_FAST_BUCKETS,
)
PENDING_ACKS = Gauge(
    "jetty_nats_pending_acks", "Events published but not yet acknowledged (retried)."
)

# --- recorder --------------------------------------------------------------------------
RECORDER_LAG = Gauge(
    "jetty_recorder_lag_events", "Events on the stream not yet projected into PostgreSQL."
)
RECORDER_BATCH_SECONDS = Histogram(
    "jetty_recorder_batch_commit_duration_seconds",
    "Time to commit one batch of events to the projection.",
    buckets=_FAST_BUCKETS,
)
RECORDER_EVENTS = Counter(
    "jetty_recorder_events_total", "Events settled by the recorder.", ["result"]
)  # result: projected|dead

# --- runner ----------------------------------------------------------------------------
RUNBOOK_QUEUE = Gauge("jetty_runbook_queue_depth", "Runbook requests waiting for a runner.")
RUNBOOK_ACTIVE = Gauge("jetty_runbook_active_runs", "Runs this runner is executing.")
SANDBOX_START = Histogram(
    "jetty_sandbox_start_duration_seconds",
    "Time to start a run's sandbox.",
    ["backend"],
    buckets=_CALL_BUCKETS,
)
RUNBOOK_OUTCOMES = Counter(
    "jetty_runbook_runs_total", "Runs ended, by agent and status.", ["agent", "status"]
)


def status_class(status: int) -> str:
    return f"{status // 100}xx"


def metrics_route(path: str = "/metrics") -> web.RouteDef:
    async def handler(_: web.Request) -> web.Response:
        body = generate_latest()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return web.get(path, handler)


class Timer:
    """``with Timer(histogram.observe):`` — seconds spent in the block."""

    __slots__ = ("_observe", "_start")

    def __init__(self, observe: Callable[[float], None]) -> None:
        self._observe = observe
        self._start = 0.0

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *_: object) -> None:
        self._observe(time.perf_counter() - self._start)


async def track_consumer_backlog(
    js: Any, stream: str, durable: str, gauge: Gauge, interval: float = 5.0
) -> None:
    """Keep ``gauge`` at the number of messages a durable consumer has not yet
    acknowledged (pending + in flight); runs until cancelled."""
    while True:
        try:
            info = await js.consumer_info(stream, durable, timeout=2.0)
            gauge.set(info.num_pending + info.num_ack_pending)
        except asyncio.CancelledError:
            raise
        except Exception:  # not created yet, or NATS away: keep the last value
            pass
        await asyncio.sleep(interval)
