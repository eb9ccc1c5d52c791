"""OpenTelemetry traces over OTLP/HTTP, on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set; otherwise every function here is a
cheap no-op and nothing of the SDK is loaded.

Propagation is W3C Trace Context: the gateway continues the client's
``traceparent`` (or starts a trace), sends the current one to the proxy in the
call's NATS message headers, and the proxy sends its ``chat {model}`` span's
``traceparent`` to the provider. Spans follow the OpenTelemetry GenAI semantic
conventions (``gen_ai.operation.name``, ``gen_ai.provider.name``,
``gen_ai.request.model``, ``gen_ai.usage.input_tokens`` ...). Message bodies are
not exported unless ``JETTY_TRACE_CONTENT=true``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

_STATE: dict[str, Any] = {"tracer": None, "provider": None, "propagator": None}


def enabled() -> bool:
    return _STATE["tracer"] is not None


def content_enabled() -> bool:
    return os.environ.get("JETTY_TRACE_CONTENT", "").lower() in ("1", "true", "yes")


def setup_tracing(service: str) -> bool:
    """Install the SDK's tracer provider with a batching OTLP/HTTP exporter (its
    settings from the standard ``OTEL_*`` variables); False when not configured."""
    if not (
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        return False
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    name = os.environ.get("OTEL_SERVICE_NAME") or f"jetty-{service}"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _STATE.update(
        tracer=provider.get_tracer("jetty"),
        provider=provider,
        propagator=TraceContextTextMapPropagator(),
    )
    return True


def shutdown_tracing() -> None:
    provider = _STATE["provider"]
    if provider is not None:
        provider.shutdown()  # exports what is batched
        _STATE.update(tracer=None, provider=None, propagator=None)


def tracer() -> Any:
    return _STATE["tracer"]


def extract(carrier: Mapping[str, str] | None) -> Any:
    """The remote parent context in ``carrier`` (HTTP or NATS headers), or None."""
    if not enabled() or not carrier:
        return None
    return _STATE["propagator"].extract(carrier=dict(carrier))


def inject() -> dict[str, str]:
    """``traceparent`` (and ``tracestate``) of the current span; empty when off."""
    if not enabled():
        return {}
    carrier: dict[str, str] = {}
    _STATE["propagator"].inject(carrier)
    return carrier


@contextlib.contextmanager
def span(
    name: str, *, kind: str = "INTERNAL", parent: Any = None, **attributes: Any
) -> Iterator[Any]:
    """A span made current for the block, or ``None`` (and no cost) when off.
    Exceptions mark it as an error and propagate."""
    t = _STATE["tracer"]
    if t is None:
        yield None
        return
    from opentelemetry.trace import SpanKind

    with t.start_as_current_span(
        name,
        context=parent,
        kind=getattr(SpanKind, kind),
        attributes={k.replace("__", "."): v for k, v in attributes.items() if v is not None},
    ) as current:
        yield current


def set_attributes(current: Any, attributes: Mapping[str, Any]) -> None:
    if current is not None:
        current.set_attributes({k: v for k, v in attributes.items() if v is not None})


def set_error(current: Any, error_type: str, message: str) -> None:
    if current is None:
        return
    from opentelemetry.trace import Status, StatusCode

    current.set_attribute("error.type", error_type)
    current.set_status(Status(StatusCode.ERROR, message))


def traceparent_of(current: Any) -> str | None:
    """The ``traceparent`` naming ``current`` as the parent."""
    if current is None or not enabled():
        return None
    from opentelemetry import trace

    carrier: dict[str, str] = {}
    _STATE["propagator"].inject(carrier, context=trace.set_span_in_context(current))
    return carrier.get("traceparent")


def record_span(
    name: str, parent: Any, start: float, end: float, attributes: Mapping[str, Any]
) -> None:
    """A finished child span of ``parent`` from epoch-second times (a step the
    agent reported after the fact: a tool call)."""
    t = _STATE["tracer"]
    if t is None or parent is None:
        return
    from opentelemetry import trace

    child = t.start_span(
        name,
        context=trace.set_span_in_context(parent),
        start_time=int(start * 1e9),
        attributes={k: v for k, v in attributes.items() if v is not None},
    )
    child.end(end_time=int(max(end, start) * 1e9))
