"""The proxy's metrics, all taken from a call's end event as it is published (so
the numbers and the record cannot disagree)."""

from __future__ import annotations

from decimal import Decimal

from shared import metrics
from shared.events.completion import CompletionCancelled, CompletionFailed, CompletionFinished

_STATUS = {
    CompletionFinished: "finished",
    CompletionFailed: "failed",
    CompletionCancelled: "cancelled",
}


def observe_end(
    data: CompletionFinished | CompletionFailed | CompletionCancelled, ingress: str, routed: bool
) -> None:
    """Count one ended call. ``routed`` is False for a model no provider serves:
    its name is the client's, so it is counted as ``unknown`` (bounded labels)."""
    provider = data.provider if routed else "none"
    model = data.model if routed else "unknown"
    metrics.CALLS.labels(provider, model, ingress, data.mode, _STATUS[type(data)]).inc()
    metrics.CALL_DURATION.labels(provider).observe(data.latency_ms / 1000)
    if data.ttft_ms is not None:
        metrics.TTFT.labels(provider).observe(data.ttft_ms / 1000)
    if data.usage is not None:
        metrics.TOKENS.labels(provider, model, "input").inc(data.usage.prompt_tokens)
        metrics.TOKENS.labels(provider, model, "output").inc(data.usage.completion_tokens)
    if data.cost_usd is not None:
        metrics.COST.labels(provider, model).inc(float(Decimal(data.cost_usd)))
    first = data.attempts[0] if data.attempts else None
    for index, attempt in enumerate(data.attempts):
        if attempt.error is not None:
            kind = attempt.error if attempt.status is None else f"{attempt.status // 100}xx"
            metrics.UPSTREAM_ERRORS.labels(attempt.provider, kind).inc()
        if index == 0 or first is None:
            continue
        if (attempt.provider, attempt.model) == (first.provider, first.model):
            metrics.RETRIES.labels(attempt.provider).inc()
        else:
            metrics.FALLBACKS.labels(attempt.provider).inc()
