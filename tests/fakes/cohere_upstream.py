"""A local Cohere v2 Chat server (aiohttp): ``POST /v2/chat``, JSON or SSE.

Speaks the wire format as Cohere documents it and its SDKs parse it:

* ``Authorization: Bearer <key>`` (401 ``{"id", "message": "invalid api token"}``),
  a JSON body, errors as ``{"id": …, "message": "invalid request: …"}``;
* request validation: ``model`` and a non-empty ``messages`` required; roles
  ``system|user|assistant|tool``; user content a string or ``text``/``image_url`` parts;
  assistant turns with ``content`` or ``tool_calls`` (``id``, ``type: function``,
  ``function.name``, string ``arguments``), optional ``tool_plan``; tool turns need a
  ``tool_call_id`` naming an earlier call; ``tool_choice`` only ``REQUIRED``/``NONE`` and
  only with ``tools``; ``response_format`` not with ``tools``; ``p`` in 0.01-0.99,
  penalties in 0-1, at most 5 ``stop_sequences``. Top-level fields outside the v2 SDK's
  request (``V2ChatRequest``) are refused — stricter than anything verified of the real
  API, so an OpenAI-only field leaking through fails loudly;
* streams as Server-Sent Events, ``event: <type>\\ndata: <json>\\n\\n`` (``message-start``,
  ``content-start``/``-delta``/``-end``, ``tool-plan-delta``, ``tool-call-start``/
  ``-delta``/``-end``, ``message-end`` with ``finish_reason`` and ``usage``), optionally
  followed by ``data: [DONE]``; non-streaming answers as ``V2ChatResponse``.

Behaviour per model name: a :class:`CohereScript` registered with
:meth:`FakeCohere.script`, else a preset (:data:`PRESETS`: ``fake-tools``, ``fake-429``,
``fake-500``, ``fake-cut``, ``fake-stream-error``…), else a plain text reply. Requests
received are in :attr:`FakeCohere.requests`; client disconnects in
:attr:`FakeCohere.disconnects`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.base import FakeServer

DEFAULT_TEXT = "Hello! How can I help you today?"

# V2ChatRequest's fields in cohere-python (src/cohere/v2/raw_client.py, chat / chat_stream).
KNOWN_FIELDS = frozenset(
    [
        "model",
        "messages",
        "tools",
        "strict_tools",
        "documents",
        "citation_options",
        "response_format",
        "safety_mode",
        "max_tokens",
        "stop_sequences",
        "temperature",
        "seed",
        "frequency_penalty",
        "presence_penalty",
        "k",
        "p",
        "logprobs",
        "tool_choice",
        "thinking",
        "stream",
    ]
)


@dataclass
class CohereScript:
    """How the fake answers one model. Delays are seconds."""

    text: str = DEFAULT_TEXT
    # (function name, JSON arguments) per tool call; when set, no text content is sent.
    tool_calls: list[tuple[str, str]] = field(default_factory=list)
    tool_plan: str = ""
    thinking: str = ""
    finish_reason: str | None = None
    status: int = 200
    error_message: str = "internal server error, this has been reported to our developers"
    retry_after: str | None = None
    first_byte_delay: float = 0.0
    chunk_delay: float = 0.0
    # Streams: drop the connection after this many events (no message-end).
    cut_after: int | None = None
    # Streams: end with finish_reason ERROR and this message in ``delta.error``.
    stream_error: str | None = None
    usage: bool = True
    cached_tokens: int | None = None
    # Streams: send ``data: [DONE]`` after ``message-end`` (some Cohere deployments do).
    done_marker: bool = False


PRESETS: dict[str, CohereScript] = {
    "fake-tools": CohereScript(
        tool_plan="I will look up the weather in Paris.",
        tool_calls=[("get_weather", '{"city": "Paris", "unit": "celsius"}')],
    ),
    "fake-429": CohereScript(
        status=429,
        error_message="You are past the per minute request limit, please wait and try again.",
        retry_after="7",
    ),
    "fake-500": CohereScript(status=500),
    "fake-cut": CohereScript(text="one two three four five six", cut_after=4),
    "fake-stream-error": CohereScript(
        text="one two three four", stream_error="model overloaded, please retry"
    ),
    "fake-no-usage": CohereScript(usage=False),
}


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float


class Invalid(Exception):
    """A request the real API would refuse with 400 ``invalid request: …``."""


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = orjson.dumps({"id": str(uuid.uuid4()), "message": message})
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def _tokens(text: str) -> int:
    return max(1, len(text) // 4) if text else 0


def _check_range(body: dict[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if not isinstance(value, int | float) or not low <= value <= high:
        raise Invalid(f"invalid request: {name} must be between {low} and {high}")


def validate(body: dict[str, Any]) -> None:
    for name in body:
        if name not in KNOWN_FIELDS:
            raise Invalid(f"invalid request: unknown field `{name}`")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise Invalid("invalid request: model must be specified")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Invalid("invalid request: messages must contain at least one message")
    call_ids: set[str] = set()
    for i, message in enumerate(messages):
        _validate_message(i, message, call_ids)
    tools = body.get("tools")
    if tools is not None:
        for tool in tools:
            function = tool.get("function") if isinstance(tool, dict) else None
            if tool.get("type") != "function" or not isinstance(function, dict):
                raise Invalid("invalid request: tools must be of type function")
            if not function.get("name"):
                raise Invalid("invalid request: tool function name must be specified")
    if "tool_choice" in body:
        if body["tool_choice"] not in {"REQUIRED", "NONE"}:
            raise Invalid("invalid request: tool_choice must be one of REQUIRED, NONE")
        if not tools:
            raise Invalid("invalid request: tool_choice requires tools to be specified")
    if body.get("response_format") is not None:
        if tools:
            raise Invalid("invalid request: response_format is not supported with tools")
        if body["response_format"].get("type") not in {"text", "json_object"}:
            raise Invalid("invalid request: response_format type must be text or json_object")
    _check_range(body, "p", 0.01, 0.99)
    _check_range(body, "frequency_penalty", 0.0, 1.0)
    _check_range(body, "presence_penalty", 0.0, 1.0)
    stops = body.get("stop_sequences")
    if stops is not None and (not isinstance(stops, list) or len(stops) > 5):
        raise Invalid("invalid request: stop_sequences can contain at most 5 items")
    if body.get("max_tokens") is not None and body["max_tokens"] < 1:
        raise Invalid("invalid request: max_tokens must be positive")


def _validate_message(i: int, message: Any, call_ids: set[str]) -> None:
    if not isinstance(message, dict):
        raise Invalid(f"invalid request: messages[{i}] must be an object")
    role = message.get("role")
    content = message.get("content")
    if role == "system":
        if not isinstance(content, str | list):
            raise Invalid(f"invalid request: messages[{i}].content must be specified")
    elif role == "user":
        if isinstance(content, list):
            for part in content:
                kind = part.get("type")
                if kind == "image_url":
                    if not isinstance((part.get("image_url") or {}).get("url"), str):
                        raise Invalid(f"invalid request: messages[{i}] image_url.url is required")
                elif kind != "text" or not isinstance(part.get("text"), str):
                    raise Invalid(f"invalid request: unsupported content type {kind!r}")
        elif not isinstance(content, str):
            raise Invalid(f"invalid request: messages[{i}].content must be specified")
    elif role == "assistant":
        calls = message.get("tool_calls")
        if not calls and not content:
            raise Invalid(f"invalid request: messages[{i}] must have content or tool_calls")
        for call in calls or ():
            function = call.get("function") or {}
            if not call.get("id") or call.get("type") != "function" or not function.get("name"):
                raise Invalid(f"invalid request: messages[{i}] has a malformed tool call")
            if not isinstance(function.get("arguments"), str):
                raise Invalid(
                    f"invalid request: messages[{i}] tool call arguments must be a string"
                )
            call_ids.add(call["id"])
    elif role == "tool":
        if message.get("tool_call_id") not in call_ids:
            raise Invalid(
                f"invalid request: messages[{i}].tool_call_id does not match any tool call"
            )
        if not isinstance(content, str | list):
            raise Invalid(f"invalid request: messages[{i}].content must be specified")
    else:
        raise Invalid(f"invalid request: messages[{i}].role {role!r} is not supported")


def _sse(kind: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class FakeCohere(FakeServer[CohereScript]):
    def __init__(self, api_key: str | None = "co-fake-key") -> None:
        super().__init__(api_key, presets=PRESETS, default=CohereScript)
        self.app.router.add_post("/v2/chat", self._chat)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _error(400, "invalid request: body is not valid JSON")
        headers = {str(k): v for k, v in request.headers.items()}
        if isinstance(body, dict):
            self.requests.append(RecordedRequest(request.path, headers, body, time.time()))
        if self.api_key is not None and request.headers.get("Authorization") != (
            f"Bearer {self.api_key}"
        ):
            return _error(401, "invalid api token")
        if not isinstance(body, dict):
            return _error(400, "invalid request: body must be a JSON object")
        try:
            validate(body)
        except Invalid as exc:
            return _error(400, str(exc))
        model = body["model"]
        script = self._script_for(model)
        if script.first_byte_delay:
            await asyncio.sleep(script.first_byte_delay)
        if script.status >= 400:
            retry = {"Retry-After": script.retry_after} if script.retry_after else None
            return _error(script.status, script.error_message, retry)
        prompt_tokens = _tokens(orjson.dumps(body["messages"]).decode())
        if body.get("stream"):
            return await self._stream(request, model, script, prompt_tokens)
        return web.Response(
            body=orjson.dumps(self._response(script, prompt_tokens)),
            content_type="application/json",
        )

    def _usage(self, script: CohereScript, prompt_tokens: int) -> dict[str, Any]:
        generated = script.thinking + script.tool_plan
        generated += "".join(n + a for n, a in script.tool_calls) or script.text
        output = _tokens(generated)
        usage: dict[str, Any] = {
            # Billed units leave out tokens Cohere adds itself (its preamble), so fewer.
            "billed_units": {"input_tokens": max(1, prompt_tokens - 3), "output_tokens": output},
            "tokens": {"input_tokens": prompt_tokens + 200, "output_tokens": output},
        }
        if script.cached_tokens is not None:
            usage["cached_tokens"] = script.cached_tokens
        return usage

    def _finish(self, script: CohereScript) -> str:
        return script.finish_reason or ("TOOL_CALL" if script.tool_calls else "COMPLETE")

    def _response(self, script: CohereScript, prompt_tokens: int) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant"}
        content: list[dict[str, Any]] = []
        if script.thinking:
            content.append({"type": "thinking", "thinking": script.thinking})
        if script.tool_calls:
            message["tool_plan"] = script.tool_plan
            message["tool_calls"] = [
                {
                    "id": f"{name}_{uuid.uuid4().hex[:12]}",
                    "type": "function",
                    "function": {"name": name, "arguments": args},
                }
                for name, args in script.tool_calls
            ]
        else:
            content.append({"type": "text", "text": script.text})
        if content:
            message["content"] = content
        doc: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "message": message,
            "finish_reason": "ERROR" if script.stream_error else self._finish(script),
        }
        if script.stream_error:
            doc["error"] = script.stream_error
        if script.usage:
            doc["usage"] = self._usage(script, prompt_tokens)
        return doc

    def _events(self, script: CohereScript, prompt_tokens: int) -> list[bytes]:
        ident = str(uuid.uuid4())
        start = {
            "id": ident,
            "type": "message-start",
            "delta": {
                "message": {
                    "role": "assistant",
                    "content": [],
                    "tool_plan": "",
                    "tool_calls": [],
                    "citations": [],
                }
            },
        }
        events = [_sse("message-start", start)]

        def content_block(index: int, kind: str, pieces: list[str]) -> None:
            opened = {kind: "", "type": kind}
            events.append(
                _sse(
                    "content-start",
                    {
                        "type": "content-start",
                        "index": index,
                        "delta": {"message": {"content": opened}},
                    },
                )
            )
            for piece in pieces:
                delta = {"message": {"content": {kind: piece}}}
                events.append(
                    _sse("content-delta", {"type": "content-delta", "index": index, "delta": delta})
                )
            events.append(_sse("content-end", {"type": "content-end", "index": index}))

        index = 0
        if script.thinking:
            content_block(index, "thinking", _words(script.thinking))
            index += 1
        if script.tool_calls:
            for piece in _words(script.tool_plan):
                delta = {"message": {"tool_plan": piece}}
                events.append(_sse("tool-plan-delta", {"type": "tool-plan-delta", "delta": delta}))
            for i, (name, args) in enumerate(script.tool_calls):
                call = {
                    "id": f"{name}_{uuid.uuid4().hex[:12]}",
                    "type": "function",
                    "function": {"name": name, "arguments": ""},
                }
                events.append(
                    _sse(
                        "tool-call-start",
                        {
                            "type": "tool-call-start",
                            "index": i,
                            "delta": {"message": {"tool_calls": call}},
                        },
                    )
                )
                step = max(1, len(args) // 3)
                for at in range(0, len(args), step):
                    fragment = {"function": {"arguments": args[at : at + step]}}
                    events.append(
                        _sse(
                            "tool-call-delta",
                            {
                                "type": "tool-call-delta",
                                "index": i,
                                "delta": {"message": {"tool_calls": fragment}},
                            },
                        )
                    )
                events.append(_sse("tool-call-end", {"type": "tool-call-end", "index": i}))
        else:
            content_block(index, "text", _words(script.text))
        end: dict[str, Any] = {"finish_reason": self._finish(script)}
        if script.stream_error:
            end = {"finish_reason": "ERROR", "error": script.stream_error}
        if script.usage:
            end["usage"] = self._usage(script, prompt_tokens)
        events.append(_sse("message-end", {"type": "message-end", "delta": end}))
        if script.done_marker:
            events.append(b"data: [DONE]\n\n")
        return events

    async def _stream(
        self, request: web.Request, model: str, script: CohereScript, prompt_tokens: int
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        try:
            for sent, event in enumerate(self._events(script, prompt_tokens)):
                if script.cut_after is not None and sent >= script.cut_after:
                    assert request.transport is not None
                    request.transport.close()
                    return response
                await response.write(event)
                if script.chunk_delay:
                    await asyncio.sleep(script.chunk_delay)
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            self._hung_up(model)
            raise
        return response


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [("" if i == 0 else " ") + word for i, word in enumerate(words)] if text else []
