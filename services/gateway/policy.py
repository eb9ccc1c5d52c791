"""A key's limits, checked on every model call from memory only: the token record
(watched ``jetty_tokens``), its usage (watched ``jetty_key_usage``) and the shared
request counts (:mod:`services.gateway.ratelimit`). No PostgreSQL, no round trip.

Order: budget (429 ``insufficient_quota``), tokens per minute, requests per minute
(429 ``rate_limit_exceeded`` with ``Retry-After``). The allow-list of models is
checked where the model is known (:func:`check_model`). The rate-limit headers
OpenAI sends (``x-ratelimit-limit-requests`` …) go on every answer of a limited key.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from aiohttp import web

from services.gateway.state import Gateway
from shared import metrics
from shared.errors import ApiError, RateLimited
from shared.keys import model_allowed
from shared.tokens import TokenRecord

RATE_HEADERS = "jetty.ratelimit_headers"


def _duration(seconds: float) -> str:
    """OpenAI's reset format: ``1s``, ``6m0s``, ``20ms``."""
    if seconds < 1:
        return f"{max(1, int(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def check_call(gw: Gateway, request: web.Request, record: TokenRecord) -> None:
    """Refuse the call if the key is over a limit; note the headers to send."""
    limits, budget = record.limits, record.budget
    if budget is None and limits.tokens_per_minute is None and limits.requests_per_minute is None:
        return
    now = time_now()
    headers: dict[str, str] = {}
    usage = gw.key_usage.usage(record.meter_id)
    if budget is not None and usage is not None:
        spent = usage.spent_in(budget.period, now)
        if spent >= budget.usd:
            metrics.KEY_REFUSALS.labels("budget").inc()
            per = "this month" if budget.period == "month" else "in total"
            raise ApiError(
                f"You exceeded your current quota: this key's budget is ${budget.usd} {per} "
                f"and it has spent ${spent.normalize():f}.",
                status=429,
                error_type="insufficient_quota",
                code="insufficient_quota",
            )
    epoch = now.timestamp()
    reset = 60 - epoch % 60
    if limits.tokens_per_minute is not None:
        used = usage.tokens_in_minute(int(epoch) // 60) if usage is not None else 0
        remaining = max(0, limits.tokens_per_minute - used)
        headers["x-ratelimit-limit-tokens"] = str(limits.tokens_per_minute)
        headers["x-ratelimit-remaining-tokens"] = str(remaining)
        headers["x-ratelimit-reset-tokens"] = _duration(reset)
        if remaining == 0:
            metrics.KEY_REFUSALS.labels("rate_limit_tokens").inc()
            raise _limited(
                f"Rate limit reached for tokens per minute: limit {limits.tokens_per_minute}, "
                f"used {used}.",
                reset,
                headers,
            )
    if limits.requests_per_minute is not None:
        decision = gw.limiter.check(record.meter_id, limits.requests_per_minute, epoch)
        headers["x-ratelimit-limit-requests"] = str(decision.limit)
        headers["x-ratelimit-remaining-requests"] = str(decision.remaining)
        headers["x-ratelimit-reset-requests"] = _duration(decision.reset)
        if not decision.allowed:
            metrics.KEY_REFUSALS.labels("rate_limit_requests").inc()
            raise _limited(
                f"Rate limit reached for requests per minute: limit {limits.requests_per_minute}.",
                decision.reset,
                headers,
            )
    request[RATE_HEADERS] = headers


def _limited(message: str, reset: float, headers: dict[str, str]) -> ApiError:
    error = RateLimited(message, code="rate_limit_exceeded", retry_after=math.ceil(reset))
    error.extra_headers = dict(headers)
    return error


def check_model(record: TokenRecord, model: str) -> None:
    """403 naming the model when the key's allow-list does not match it."""
    if not model_allowed(record.allowed_models, model):
        metrics.KEY_REFUSALS.labels("model").inc()
        raise ApiError(
            f"This API key may not use the model '{model}' "
            f"(allowed: {', '.join(record.allowed_models or ())}).",
            status=403,
            error_type="permission_error",
            param="model",
            code="model_not_allowed",
        )


async def add_rate_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the rate-limit headers on a limited key's answers."""
    headers = request.get(RATE_HEADERS)
    if headers:
        for name, value in headers.items():
            response.headers.setdefault(name, value)


def time_now() -> datetime:
    return datetime.now(UTC)
