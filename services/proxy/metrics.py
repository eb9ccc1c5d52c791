"""The proxy's metrics and its ``chat {model}`` span's attributes, all taken from
a call's end event as it is published (so the numbers, the trace and the record
cannot disagree)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson

from shared import metrics, tracing
from shared.chatwire import ChatCall
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


def trace_end(
    span: Any, call: ChatCall, data: CompletionFinished | CompletionFailed | CompletionCancelled
) -> None:
    """The GenAI semantic-convention attributes of the call's span."""
    response = data.response
    reasons = [c.finish_reason for c in response.choices if c.finish_reason] or (
        [response.finish_reason] if response.finish_reason else []
    )
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": data.provider,
        "gen_ai.request.model": data.model,
        "gen_ai.response.model": response.upstream_model,
        "gen_ai.response.id": response.upstream_id,
        "gen_ai.response.finish_reasons": reasons or None,
        "gen_ai.usage.input_tokens": data.usage.prompt_tokens if data.usage else None,
        "gen_ai.usage.output_tokens": data.usage.completion_tokens if data.usage else None,
        "jetty.trajectory_id": call.trajectory_id,
        "jetty.collection": call.collection,
        "jetty.step_index": call.step_index,
        "jetty.ingress": call.ingress,
        "jetty.cost_usd": data.cost_usd,
    }
    if tracing.content_enabled():
        request = data.request or {}
        attributes["gen_ai.input.messages"] = orjson.dumps(request.get("messages", [])).decode()
        attributes["gen_ai.output.messages"] = orjson.dumps(
            [{"role": "assistant", "content": response.content}]
        ).decode()
    tracing.set_attributes(span, attributes)
    if isinstance(data, CompletionFailed):
        tracing.set_error(span, data.error.code or data.error.type, data.error.message)
    elif isinstance(data, CompletionCancelled):
        tracing.set_error(span, "cancelled", data.reason)
