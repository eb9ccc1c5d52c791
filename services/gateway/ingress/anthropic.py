"""``POST /v1/messages`` and ``/v1/messages/count_tokens``: the Anthropic Messages API
in and out, served by any provider behind the proxy.

The request is validated and translated to the OpenAI chat shape by
:mod:`.anthropic_translate` (whose docstring lists every mapping), then goes the
same way as a chat completion (:func:`~services.gateway.calls.open_call`, recorded
with ingress ``anthropic.messages``). The answer comes back here:

* **Message.** ``id`` (the upstream's own ``msg_…`` when the upstream is Anthropic,
  else a new one), ``content`` blocks in Anthropic's order — thinking (the
  ``thinking_blocks`` extra with signatures, else ``reasoning_content`` as a thinking
  block with an empty signature), text (and a refusal's text), ``tool_use`` (arguments
  parsed; unparseable ones become ``{}``) — ``stop_reason`` from ``finish_reason``
  (``stop``→``end_turn``, ``length``→``max_tokens``, ``tool_calls``→``tool_use``,
  ``content_filter``→``refusal``; ``end_turn`` with tool calls is ``tool_use``).
  ``stop_sequence`` is always ``null`` and a matched stop sequence reads as
  ``end_turn``: the OpenAI shape does not say which one matched.
* **Usage.** ``input_tokens`` = ``prompt_tokens`` - cache reads - cache writes,
  ``cache_read_input_tokens`` = ``prompt_tokens_details.cached_tokens``,
  ``cache_creation_input_tokens`` = ``prompt_tokens_details.cache_creation_tokens``,
  ``output_tokens`` = ``completion_tokens`` (+ ``output_tokens_details.thinking_tokens``
  from the reasoning tokens when known).
* **Stream.** ``event: <type>\\ndata: <json>\\n\\n``: ``message_start`` (empty content;
  usage all zero, since the counts arrive only with the proxy's last chunk) →
  per block ``content_block_start`` (a ``ping`` after the first) →
  ``content_block_delta`` (``text_delta`` / ``thinking_delta`` / ``signature_delta`` /
  ``input_json_delta``) → ``content_block_stop``; then ``message_delta`` with the stop
  reason and the whole usage (cumulative, as the API sends it) → ``message_stop``.
  Blocks are sequential; a provider interleaving two tool calls' arguments gets its
  late pieces sent with the earlier block's index (the SDKs accumulate by index). An
  error after the first byte is an ``event: error``; before it, a real HTTP error.
* **Errors** are ``{"type": "error", "error": {"type", "message"}}`` with the HTTP
  status of :class:`~shared.errors.ApiError` — on every path under ``/v1/messages``,
  401s from the auth middleware included (:func:`render_error`, registered with the
  middleware). A ``request-id`` header carries the trajectory id, as the SDKs expose it.
* ``anthropic-version`` is not required (the real API answers 400 without it) and
  any value is accepted: the stream is always the ``2023-06-01`` format.
* ``count_tokens`` answers :func:`.anthropic_translate.estimate_input_tokens` — an
  estimate, validated like a Messages request, no upstream call, not recorded.
"""

from __future__ import annotations

import os
import time
from typing import Any, Final

import orjson
from aiohttp import web

from services.gateway.calls import open_call, read_body
from services.gateway.ingress.anthropic_translate import (
    CountTokensRequest,
    Json,
    MessagesRequest,
    estimate_input_tokens,
    header_betas,
    parse_request,
    to_openai,
)
from services.gateway.middleware import TRAJECTORY_HEADER, register_error_renderer
from services.gateway.sse import SSE, relay_stream
from services.gateway.state import GATEWAY, auth_of
from shared.errors import ApiError
from shared.openai_chat import check_chat_request

INGRESS: Final = "anthropic.messages"
PATH: Final = "/v1/messages"

# --- errors ----------------------------------------------------------------------------------

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(exc: ApiError) -> str:
    """Anthropic's error type for ``exc`` (its SDK picks the exception by status)."""
    if exc.code == "upstream_overloaded":
        return "overloaded_error"
    if exc.status in _ERROR_TYPES:
        return _ERROR_TYPES[exc.status]
    return "api_error" if exc.status >= 500 else "invalid_request_error"


def _error_body(exc: ApiError) -> Json:
    message = exc.message
    if exc.code == "missing_api_key":
        message = "Missing API key: send 'x-api-key: <token>' or 'Authorization: Bearer <token>'."
    return {"type": "error", "error": {"type": error_type(exc), "message": message}}


def render_error(exc: ApiError) -> bytes:
    body = _error_body(exc)
    if exc.trajectory_id:
        body["request_id"] = exc.trajectory_id
    return orjson.dumps(body)


def error_event(exc: ApiError) -> bytes:
    return _event("error", _error_body(exc))


register_error_renderer(PATH, render_error)

# --- the answer --------------------------------------------------------------------------------

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def stop_reason(finish_reason: Any, has_tool_use: bool) -> str:
    reason = STOP_REASONS.get(finish_reason, "end_turn") if finish_reason else "end_turn"
    return "tool_use" if has_tool_use and reason == "end_turn" else reason


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def usage_from(raw: Any) -> Json:
    """Anthropic usage from OpenAI usage (all zero when there is none)."""
    raw = raw if isinstance(raw, dict) else {}
    details = raw.get("prompt_tokens_details")
    details = details if isinstance(details, dict) else {}
    read = _count(details.get("cached_tokens"))
    write = _count(details.get("cache_creation_tokens"))
    usage: Json = {
        "input_tokens": max(0, _count(raw.get("prompt_tokens")) - read - write),
        "cache_creation_input_tokens": write,
        "cache_read_input_tokens": read,
        "output_tokens": _count(raw.get("completion_tokens")),
    }
    completion = raw.get("completion_tokens_details")
    if isinstance(completion, dict) and _count(completion.get("reasoning_tokens")):
        usage["output_tokens_details"] = {"thinking_tokens": completion["reasoning_tokens"]}
    return usage


def _random_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def message_id(upstream_id: Any) -> str:
    if isinstance(upstream_id, str) and upstream_id.startswith("msg_"):
        return upstream_id
    return _random_id("msg_")


def _tool_input(arguments: Any) -> Json:
    try:
        parsed = orjson.loads(arguments) if isinstance(arguments, str) and arguments else {}
    except orjson.JSONDecodeError:
        parsed = {}
    return parsed if isinstance(parsed, dict) else {}


def _thinking_blocks(message: Json) -> list[Json]:
    blocks = message.get("thinking_blocks")
    if isinstance(blocks, list):
        return [
            b
            for b in blocks
            if isinstance(b, dict) and b.get("type") in ("thinking", "redacted_thinking")
        ]
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        return [{"type": "thinking", "thinking": reasoning, "signature": ""}]
    return []


def message_from_completion(doc: Json, model: str) -> Json:
    """The Anthropic Message for a ``chat.completion`` JSON."""
    choices = doc.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    message = choice.get("message") or {}
    content = _thinking_blocks(message)
    for field in ("content", "refusal"):
        text = message.get(field)
        if isinstance(text, str) and text:
            content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or _random_id("toolu_"),
                "name": function.get("name") or "",
                "input": _tool_input(function.get("arguments")),
            }
        )
    has_tool = any(block["type"] == "tool_use" for block in content)
    return {
        "id": message_id(doc.get("id")),
        "type": "message",
        "role": "assistant",
        "model": doc.get("model") or model,
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason"), has_tool),
        "stop_sequence": None,
        "usage": usage_from(doc.get("usage")),
    }


# --- the stream --------------------------------------------------------------------------------


def _event(kind: str, data: Json) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


PING: Final = b'event: ping\ndata: {"type": "ping"}\n\n'  # the API's own spacing


class StreamTranslator:
    """Feeds on ``chat.completion.chunk`` JSONs, returns Messages SSE bytes.

    One content block is open at a time (``_open``: its type, ``_index``: its index);
    a delta of another kind closes it and opens the next.
    """

    __slots__ = (
        "_finish",
        "_has_tool",
        "_index",
        "_open",
        "_pinged",
        "_tools",
        "_usage",
        "model",
        "started",
    )

    def __init__(self, model: str) -> None:
        self.model = model
        self.started = False
        self._index = -1
        self._open: str | None = None
        self._tools: dict[int, int] = {}  # OpenAI tool-call index -> content block index
        self._pinged = False
        self._finish: Any = None
        self._usage: Any = None
        self._has_tool = False

    def _start(self, chunk: Json) -> bytes:
        self.started = True
        self.model = chunk.get("model") or self.model
        message: Json = {
            "id": message_id(chunk.get("id")),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage_from(None),
        }
        return _event("message_start", {"message": message})

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return _event("content_block_stop", {"index": self._index})

    def _begin(self, block: Json) -> bytes:
        out = self._close()
        self._index += 1
        self._open = block["type"]
        out += _event("content_block_start", {"index": self._index, "content_block": block})
        if not self._pinged:
            self._pinged = True
            out += PING
        return out

    def _delta(self, index: int, delta: Json) -> bytes:
        return _event("content_block_delta", {"index": index, "delta": delta})

    def feed(self, chunk: Any) -> bytes:
        if not isinstance(chunk, dict):
            return b""
        out = b"" if self.started else self._start(chunk)
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # one choice per Messages request
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content")
            if isinstance(reasoning, str) and reasoning:
                if self._open != "thinking":
                    out += self._begin({"type": "thinking", "thinking": "", "signature": ""})
                out += self._delta(self._index, {"type": "thinking_delta", "thinking": reasoning})
            for block in delta.get("thinking_blocks") or ():
                out += self._thinking_block(block)
            for field in ("content", "refusal"):
                text = delta.get(field)
                if isinstance(text, str) and text:
                    if self._open != "text":
                        out += self._begin({"type": "text", "text": ""})
                    out += self._delta(self._index, {"type": "text_delta", "text": text})
            for call in delta.get("tool_calls") or ():
                out += self._tool_call(call)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return out

    def _thinking_block(self, block: Any) -> bytes:
        if not isinstance(block, dict):
            return b""
        if block.get("type") == "redacted_thinking":
            return self._begin(block) + self._close()
        if block.get("type") != "thinking":
            return b""
        out = b""
        if self._open != "thinking":
            # Sent whole (not streamed before): replay its text, then its signature.
            out += self._begin({"type": "thinking", "thinking": "", "signature": ""})
            if block.get("thinking"):
                delta = {"type": "thinking_delta", "thinking": block["thinking"]}
                out += self._delta(self._index, delta)
        if block.get("signature"):
            delta = {"type": "signature_delta", "signature": block["signature"]}
            out += self._delta(self._index, delta)
        return out + self._close()

    def _tool_call(self, call: Any) -> bytes:
        if not isinstance(call, dict):
            return b""
        function = call.get("function") or {}
        position = call.get("index", 0)
        out = b""
        index = self._tools.get(position)
        if index is None:
            block: Json = {
                "type": "tool_use",
                "id": call.get("id") or _random_id("toolu_"),
                "name": function.get("name") or "",
                "input": {},
            }
            out += self._begin(block)
            index = self._tools[position] = self._index
            self._has_tool = True
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            out += self._delta(index, {"type": "input_json_delta", "partial_json": arguments})
        return out

    def finish(self) -> bytes:
        """Close the message: the open block, ``message_delta``, ``message_stop``."""
        out = b"" if self.started else self._start({})
        out += self._close()
        delta = {"stop_reason": stop_reason(self._finish, self._has_tool), "stop_sequence": None}
        out += _event("message_delta", {"delta": delta, "usage": usage_from(self._usage)})
        return out + _event("message_stop", {})


# --- handlers ----------------------------------------------------------------------------------


async def create_message(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    received_at = time.time()
    auth = auth_of(request)
    body = await read_body(request, gw.settings.max_body_bytes)
    parsed = parse_request(body, MessagesRequest)
    stream = bool(parsed.stream)
    betas = header_betas(request.headers.getall("anthropic-beta", []))
    chat_body = orjson.dumps(to_openai(parsed, betas=betas, stream=stream))
    req = check_chat_request(chat_body)
    call = await open_call(gw, auth, req, chat_body, received_at=received_at, ingress=INGRESS)
    headers = {TRAJECTORY_HEADER: call.trajectory_id, "request-id": call.trajectory_id}
    if not stream:
        completion = orjson.loads(await call.response_json())
        message = message_from_completion(completion, parsed.model)
        return web.Response(
            body=orjson.dumps(message), content_type="application/json", headers=headers
        )
    return await relay_stream(request, call, _Stream(StreamTranslator(parsed.model)), headers)


class _Stream:
    """Anthropic's side of :func:`relay_stream`."""

    content_type = SSE

    def __init__(self, translator: StreamTranslator) -> None:
        self._translator = translator

    def chunk(self, payload: bytes) -> bytes:
        return self._translator.feed(orjson.loads(payload))

    def done(self) -> bytes:
        return self._translator.finish()

    def failed(self, exc: ApiError) -> bytes:
        return error_event(exc)


async def count_tokens(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    body = await read_body(request, gw.settings.max_body_bytes)
    parsed = parse_request(body, CountTokensRequest)
    to_openai(parsed, betas=[], stream=False)  # the same 400s a Messages call would get
    return web.Response(
        body=orjson.dumps({"input_tokens": estimate_input_tokens(parsed)}),
        content_type="application/json",
    )


def routes() -> list[web.RouteDef]:
    return [
        web.post(PATH, create_message),
        web.post(PATH + "/count_tokens", count_tokens),
    ]
