"""Export: a trajectory as OTLP/JSON spans in the OpenTelemetry GenAI conventions
(``GET /api/v1/trajectories/{id}?format=otlp``), and a filtered list as JSONL, one
whole trajectory per line, or as one OTLP/JSON document
(``GET /api/v1/export/trajectories?format=jsonl|otlp&status=&task=&model=&since=``).

Ids are derived from the trajectory id (trace id: the first 16 bytes of its
SHA-256; span ids from the step index), so exporting twice gives the same spans
and an importer de-duplicates. A passthrough trajectory is one ``chat {model}``
span; a runbook is an ``invoke_agent {agent}`` span with its model calls
(``chat``) and tool calls (``execute_tool {name}``) as children and the agent's
messages as span events. Bodies are exported as far as they were stored
(``JETTY_STORE_BODIES``), as ``gen_ai.input.messages`` / ``gen_ai.output.messages``.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from services.gateway.state import GATEWAY, auth_of
from services.gateway.trajectories import db_unavailable, list_filters, open_pool
from shared.db import trajectories as queries
from shared.db.trajectories import StepView, TrajectoryView
from shared.errors import InvalidRequest

KIND_INTERNAL, KIND_CLIENT = 1, 3
STATUS_OK, STATUS_ERROR = 1, 2
MAX_EXPORT = 10_000
_PAGE = 200


def _id(trajectory_id: str, salt: str, size: int) -> str:
    return hashlib.sha256(f"{trajectory_id}/{salt}".encode()).hexdigest()[: size * 2]


def _nanos(moment: datetime | None, fallback: datetime) -> str:
    return str(int((moment or fallback).timestamp() * 1_000_000_000))


def _attr(key: str, value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, bool):
        typed: dict[str, Any] = {"boolValue": value}
    elif isinstance(value, int):
        typed = {"intValue": str(value)}
    elif isinstance(value, float):
        typed = {"doubleValue": value}
    elif isinstance(value, list):
        typed = {"arrayValue": {"values": [{"stringValue": str(v)} for v in value]}}
    else:
        typed = {"stringValue": str(value)}
    return {"key": key, "value": typed}


def _attrs(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [a for k, v in values.items() if (a := _attr(k, v)) is not None]


def _chat_span(view: TrajectoryView, step: StepView, parent: str | None) -> dict[str, Any]:
    response = step.response
    request = step.request or {}
    values: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": step.provider,
        "gen_ai.request.model": step.model or request.get("model"),
        "gen_ai.response.id": response.upstream_id if response else None,
        "gen_ai.response.finish_reasons": [response.finish_reason]
        if response and response.finish_reason
        else None,
        "gen_ai.usage.input_tokens": step.usage.prompt_tokens if step.usage else None,
        "gen_ai.usage.output_tokens": step.usage.completion_tokens if step.usage else None,
        "gen_ai.input.messages": orjson.dumps(request["messages"]).decode()
        if request.get("messages")
        else None,
        "gen_ai.output.messages": orjson.dumps(
            [{"role": "assistant", "content": response.content}]
        ).decode()
        if response and response.content is not None
        else None,
        "jetty.trajectory_id": view.trajectory_id,
        "jetty.collection": view.collection,
        "jetty.task": view.task,
        "jetty.step_index": step.index,
        "jetty.cost_usd": step.cost_usd,
        "jetty.latency_ms": step.latency_ms,
        "jetty.ttft_ms": step.ttft_ms,
    }
    start = step.started_at or view.created_at
    end = step.ended_at or view.completed_at or view.created_at
    status: dict[str, Any] = {"code": STATUS_OK}
    if step.error is not None:
        values["error.type"] = step.error.code or step.error.type
        status = {"code": STATUS_ERROR, "message": step.error.message}
    return {
        "traceId": _id(view.trajectory_id, "trace", 16),
        "spanId": _id(view.trajectory_id, f"step/{step.index}", 8),
        **({"parentSpanId": parent} if parent else {}),
        "name": f"chat {values['gen_ai.request.model'] or ''}".strip(),
        "kind": KIND_CLIENT,
        "startTimeUnixNano": _nanos(start, view.created_at),
        "endTimeUnixNano": _nanos(end, view.created_at),
        "attributes": _attrs(values),
        "status": status,
    }


def _tool_span(view: TrajectoryView, step: StepView, parent: str) -> dict[str, Any]:
    values = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": step.tool_name,
        "gen_ai.tool.call.id": step.tool_call_id,
        "gen_ai.tool.call.arguments": orjson.dumps(step.tool_input).decode()
        if step.tool_input is not None
        else None,
        "jetty.step_index": step.index,
    }
    start = step.started_at or view.created_at
    return {
        "traceId": _id(view.trajectory_id, "trace", 16),
        "spanId": _id(view.trajectory_id, f"step/{step.index}", 8),
        "parentSpanId": parent,
        "name": f"execute_tool {step.tool_name or ''}".strip(),
        "kind": KIND_INTERNAL,
        "startTimeUnixNano": _nanos(start, view.created_at),
        "endTimeUnixNano": _nanos(step.ended_at or start, view.created_at),
        "attributes": _attrs(values),
        "status": {"code": STATUS_ERROR if step.is_error else STATUS_OK},
    }


def spans_of(view: TrajectoryView) -> list[dict[str, Any]]:
    if view.mode != "runbook":
        return [_chat_span(view, step, None) for step in view.steps if step.kind == "completion"]
    root = _id(view.trajectory_id, "root", 8)
    events = [
        {
            "timeUnixNano": _nanos(step.started_at, view.created_at),
            "name": "gen_ai.assistant.message",
            "attributes": _attrs({"content": step.text, "jetty.step_index": step.index}),
        }
        for step in view.steps
        if step.kind == "message"
    ]
    values = {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": view.agent,
        "gen_ai.request.model": view.model,
        "gen_ai.usage.input_tokens": view.usage.prompt_tokens if view.usage else None,
        "gen_ai.usage.output_tokens": view.usage.completion_tokens if view.usage else None,
        "jetty.trajectory_id": view.trajectory_id,
        "jetty.collection": view.collection,
        "jetty.task": view.task,
        "jetty.status": view.status,
        "jetty.cost_usd": view.cost_usd,
    }
    spans = [
        {
            "traceId": _id(view.trajectory_id, "trace", 16),
            "spanId": root,
            "name": f"invoke_agent {view.agent or ''}".strip(),
            "kind": KIND_INTERNAL,
            "startTimeUnixNano": _nanos(view.created_at, view.created_at),
            "endTimeUnixNano": _nanos(view.completed_at, view.created_at),
            "attributes": _attrs(values),
            "events": events,
            "status": {"code": STATUS_ERROR if view.status == "failed" else STATUS_OK},
        }
    ]
    for step in view.steps:
        if step.kind == "completion":
            spans.append(_chat_span(view, step, root))
        elif step.kind == "tool_call":
            spans.append(_tool_span(view, step, root))
    return spans


def otlp_document(views: list[TrajectoryView]) -> dict[str, Any]:
    """An OTLP/JSON ``ExportTraceServiceRequest`` holding the trajectories' spans."""
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": _attrs({"service.name": "jetty-flows"})},
                "scopeSpans": [
                    {
                        "scope": {"name": "jetty.export"},
                        "spans": [span for view in views for span in spans_of(view)],
                    }
                ],
            }
        ]
    }


def otlp_response(view: TrajectoryView) -> web.Response:
    return web.Response(body=orjson.dumps(otlp_document([view])), content_type="application/json")


async def export_trajectories(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/export/trajectories``: the filtered list, newest first."""
    gw = request.app[GATEWAY]
    collection = auth_of(request).collection
    q = request.query
    fmt = q.get("format", "jsonl")
    if fmt not in ("jsonl", "otlp"):
        raise InvalidRequest("Invalid value for 'format': jsonl or otlp.", param="format")
    filters = list_filters(q, default_limit=MAX_EXPORT, max_limit=MAX_EXPORT)
    limit = filters.pop("limit")
    pool = await open_pool(gw)
    views: list[TrajectoryView] = []
    response: web.StreamResponse | None = None
    cursor: str | None = None
    sent = 0
    try:
        while sent < limit:
            page = await queries.list_trajectories(
                pool, collection, **filters, limit=min(_PAGE, limit - sent), cursor=cursor
            )
            for summary in page.data:
                view = await queries.get_trajectory(pool, collection, summary.trajectory_id)
                if view is None:  # deleted meanwhile
                    continue
                sent += 1
                if fmt == "otlp":
                    views.append(view)
                    continue
                if response is None:
                    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
                    await response.prepare(request)
                await response.write(view.model_dump_json().encode() + b"\n")
            if not page.has_more or page.next_cursor is None:
                break
            cursor = page.next_cursor
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        if response is not None:
            raise  # the stream is out; cut it rather than pretend it is complete
        raise db_unavailable(exc) from None
    if fmt == "otlp":
        return web.Response(
            body=orjson.dumps(otlp_document(views)), content_type="application/json"
        )
    if response is None:
        return web.Response(body=b"", content_type="application/x-ndjson")
    await response.write_eof()
    return response
