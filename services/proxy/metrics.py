"""The proxy's metrics and its ``chat {model}`` span's attributes, all taken from
a call's end event as it is published (so the numbers, the trace and the record
cannot disagree)."""

from __future__ import annotations

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


class _Series:
    """The children of one label set (``labels()`` costs a lock and a dict lookup
    per metric; a call touches up to six): looked up once, then reused. The
    optional ones appear on first use, as with ``labels()`` itself."""

    __slots__ = ("_cost", "_tokens", "_ttft", "calls", "duration", "model", "provider")

    def __init__(self, provider: str, model: str, ingress: str, mode: str, status: str) -> None:
        self.provider = provider
        self.model = model
        self.calls = metrics.CALLS.labels(provider, model, ingress, mode, status)
        self.duration = metrics.CALL_DURATION.labels(provider)
        self._ttft: Any = None
        self._tokens: tuple[Any, Any] | None = None
        self._cost: Any = None

    def ttft(self) -> Any:
        if self._ttft is None:
            self._ttft = metrics.TTFT.labels(self.provider)
        return self._ttft

    def tokens(self) -> tuple[Any, Any]:
        if self._tokens is None:
            self._tokens = (
                metrics.TOKENS.labels(self.provider, self.model, "input"),
                metrics.TOKENS.labels(self.provider, self.model, "output"),
            )
        return self._tokens

    def cost(self) -> Any:
        if self._cost is None:
            self._cost = metrics.COST.labels(self.provider, self.model)
        return self._cost


# Bounded like the labels themselves (configured providers, routed models); cleared
# past the cap rather than grown without end by a client cycling model names.
_SERIES: dict[tuple[str, str, str, str, str], _Series] = {}
_SERIES_CAP = 4096


def _series(provider: str, model: str, ingress: str, mode: str, status: str) -> _Series:
    key = (provider, model, ingress, mode, status)
    found = _SERIES.get(key)
    if found is None:
        if len(_SERIES) >= _SERIES_CAP:
            _SERIES.clear()
        found = _SERIES[key] = _Series(*key)
    return found


def observe_end(
    data: CompletionFinished | CompletionFailed | CompletionCancelled, ingress: str, routed: bool
) -> None:
    """Count one ended call. ``routed`` is False for a model no provider serves:
    its name is the client's, so it is counted as ``unknown`` (bounded labels)."""
    provider = data.provider if routed else "none"
    model = data.model if routed else "unknown"
    series = _series(provider, model, ingress, data.mode, _STATUS[type(data)])
    series.calls.inc()
    series.duration.observe(data.latency_ms / 1000)
    if data.ttft_ms is not None:
        series.ttft().observe(data.ttft_ms / 1000)
    if data.usage is not None:
        tokens_in, tokens_out = series.tokens()
        tokens_in.inc(data.usage.prompt_tokens)
        tokens_out.inc(data.usage.completion_tokens)
    if data.cost_usd is not None:
        # A decimal string: float() of it rounds exactly as float(Decimal(...)) does.
        series.cost().inc(float(data.cost_usd))
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
