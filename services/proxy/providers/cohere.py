"""Cohere's v2 Chat API (``POST {base}/v2/chat``) behind the OpenAI chat-completions shape.

Configuration, under the names Cohere's own SDK and docs use:

=================================  ====================================================
``COHERE_API_KEY`` (or the SDK's   required; sent as ``Authorization: Bearer <key>``
``CO_API_KEY``)
``COHERE_BASE_URL`` (or the SDK's  default ``https://api.cohere.com``; a trailing ``/v1``
``CO_API_URL``)                    or ``/v2`` is ignored (the path is always ``/v2/chat``)
``JETTY_COHERE_MODELS``            comma-separated names for ``GET /v1/models``
                                   (default :data:`DEFAULT_MODELS`)
=================================  ====================================================

Wire format (checked against cohere-python's generated v2 types and raw client, the
Cohere docs' streaming and tool-use-streaming pages, and the Vercel AI SDK's recorded
Cohere fixtures): the stream is Server-Sent Events, ``event: <type>`` plus
``data: <json>`` whose ``type`` repeats the event name — ``message-start``,
``content-start``/``content-delta``/``content-end`` (``delta.message.content.text``, or
``.thinking`` for reasoning models), ``tool-plan-delta`` (``delta.message.tool_plan``),
``tool-call-start``/``tool-call-delta``/``tool-call-end`` (``index`` plus
``delta.message.tool_calls``), ``citation-start``/``citation-end``, ``debug`` and one
``message-end`` carrying ``delta.finish_reason``, ``delta.usage`` and, on failure,
``delta.error``. Some deployments follow it with ``data: [DONE]``. Errors are
``{"id": …, "message": …}`` bodies.

Translation decisions where the two APIs do not line up:

* System and ``developer`` messages stay where they are, as ``system`` messages:
  v2 accepts them anywhere in ``messages``, so a mid-conversation system message keeps
  its position (and meaning) instead of being hoisted.
* An assistant turn's text that accompanies tool calls travels as Cohere's
  ``tool_plan``; Cohere's ``tool_plan`` (and its ``tool-plan-delta`` events) comes back
  as the assistant ``content``, so a tool-calling turn round-trips unchanged.
* Reasoning models' ``thinking`` content is returned as ``reasoning_content`` (the
  DeepSeek/vLLM convention); Cohere folds thinking tokens into ``output_tokens``, so no
  separate ``reasoning_tokens`` count exists.
* ``top_p`` is clamped into Cohere's ``p`` range 0.01-0.99; ``frequency_penalty`` and
  ``presence_penalty`` into 0-1 (Cohere has no negative penalties). ``temperature``,
  ``seed``, ``stop`` (→ ``stop_sequences``) and ``max_completion_tokens``/``max_tokens``
  (→ ``max_tokens``) map directly.
* ``tool_choice``: ``"none"`` → ``NONE``, ``"required"`` → ``REQUIRED``, ``"auto"``
  omitted; a named function becomes ``REQUIRED`` with ``tools`` narrowed to that one
  function (Cohere cannot name a tool). A function's ``strict: true`` turns on
  ``strict_tools``.
* ``response_format``: ``json_object`` → ``json_object``; ``json_schema`` →
  ``json_object`` with its ``schema`` as ``json_schema``; ``text`` omitted.
* ``n`` > 1 is refused (400): Cohere returns one generation per call.
* Dropped, never sent: ``logprobs``/``top_logprobs``, ``logit_bias``, ``user``,
  ``parallel_tool_calls``, ``reasoning_effort``, ``stream_options`` (Cohere always
  reports usage), ``functions``/``function_call`` and other OpenAI-only fields; message
  ``name`` fields; Cohere ``citations`` in answers.
* Finish reasons: ``COMPLETE``/``STOP_SEQUENCE`` → ``stop`` (``tool_calls`` when the
  turn called tools), ``MAX_TOKENS`` → ``length``, ``TOOL_CALL`` → ``tool_calls``;
  ``ERROR`` → 502 and ``TIMEOUT`` → 504 (raised after the chunks already streamed).
* Usage: ``usage.tokens`` gives ``prompt_tokens``/``completion_tokens`` (falling back
  to ``billed_units``); ``usage.cached_tokens`` → ``prompt_tokens_details.cached_tokens``;
  the billed counts → ``prompt_tokens_details.billed_tokens`` and
  ``completion_tokens_details.billed_tokens`` (Cohere charges billed units, which leave
  out tokens Cohere adds itself).
* Errors: HTTP 498 (a deny-listed token in the prompt or answer) → 400
  ``content_filter``; 499 → 502; the rest as for every provider (429 keeps
  ``Retry-After``, our key rejected → 502, other 4xx keep status and message).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from services.proxy.providers import embed_wire
from services.proxy.providers.base import (
    ChatChunk,
    ChatResponse,
    ChunkChoice,
    ChunkDelta,
    CompletionUsage,
    EmbedCall,
    Embeddings,
    FunctionCall,
    MessageToolCall,
    Provider,
    ResponseChoice,
    ResponseMessage,
    TokenDetails,
    ToolCallDelta,
    UpstreamCall,
    texts_only,
)
from services.proxy.providers.cohere_translate import as_object, to_cohere
from services.proxy.providers.http import UpstreamHttp, UpstreamStream, interrupted
from services.proxy.providers.openai_compat import Timeouts, error_from_status
from shared.errors import ApiError, UpstreamError, UpstreamTimeout

log = logging.getLogger(__name__)

NAME = "cohere"
SETUP_HINT = "set COHERE_API_KEY (and COHERE_BASE_URL for another endpoint)"
BARE_PATTERNS: tuple[str, ...] = ("command-*", "c4ai-*")
DEFAULT_MODELS: tuple[str, ...] = (
    "command-a-03-2025",
    "command-a-reasoning-08-2025",
    "command-a-vision-07-2025",
    "command-r7b-12-2024",
    "command-r-plus-08-2024",
    "command-r-08-2024",
)
DEFAULT_BASE_URL = "https://api.cohere.com"


FINISH_REASONS = {
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "MAX_TOKENS": "length",
    "TOOL_CALL": "tool_calls",
}


@dataclass(frozen=True, slots=True)
class CohereConfig:
    base_url: str = DEFAULT_BASE_URL
    # repr=False: the key must never reach a log line through a repr.
    api_key: str = field(default="", repr=False)
    models: tuple[str, ...] = DEFAULT_MODELS
    timeouts: Timeouts = field(default_factory=Timeouts)
    pool_size: int = 1024
    name: str = NAME


def from_env(env: Mapping[str, str], timeouts: Timeouts, pool_size: int) -> CohereProvider | None:
    """The Cohere provider when a key is configured (see the module docstring)."""
    key = env.get("COHERE_API_KEY") or env.get("CO_API_KEY")
    if not key:
        return None
    base = env.get("COHERE_BASE_URL") or env.get("CO_API_URL") or DEFAULT_BASE_URL
    listed = tuple(m.strip() for m in env.get("JETTY_COHERE_MODELS", "").split(",") if m.strip())
    return CohereProvider(
        CohereConfig(
            base_url=base,
            api_key=key,
            models=listed or DEFAULT_MODELS,
            timeouts=timeouts,
            pool_size=pool_size,
        )
    )


def chat_url(base_url: str) -> str:
    """``{base}/v2/chat``; the base is server configuration, validated here."""
    parts = urlsplit(base_url.strip())
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"COHERE_BASE_URL must be an http(s) URL, got {base_url!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("COHERE_BASE_URL must not carry a query, fragment or credentials")
    root = base_url.strip().rstrip("/")
    for suffix in ("/v1", "/v2"):
        root = root.removesuffix(suffix)
    return root + "/v2/chat"


# --- response translation ----------------------------------------------------------------


def _count(value: Any) -> int | None:
    # Cohere's counts are JSON numbers typed as doubles (``UsageTokens.input_tokens: float``).
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def usage_from_cohere(raw: Any) -> CompletionUsage | None:
    if not isinstance(raw, dict):
        return None
    tokens = as_object(raw.get("tokens"))
    billed = as_object(raw.get("billed_units"))
    billed_in, billed_out = _count(billed.get("input_tokens")), _count(billed.get("output_tokens"))
    prompt = _count(tokens.get("input_tokens"))
    completion = _count(tokens.get("output_tokens"))
    if prompt is None:
        prompt = billed_in
    if completion is None:
        completion = billed_out
    if prompt is None and completion is None:
        return None
    prompt_details: dict[str, int] = {}
    cached = _count(raw.get("cached_tokens"))
    if cached is not None:
        prompt_details["cached_tokens"] = cached
    if billed_in is not None:
        prompt_details["billed_tokens"] = billed_in
    completion_details = {"billed_tokens": billed_out} if billed_out is not None else {}
    usage = CompletionUsage(
        prompt_tokens=prompt or 0,
        completion_tokens=completion or 0,
        total_tokens=(prompt or 0) + (completion or 0),
    )
    if prompt_details:
        usage.prompt_tokens_details = TokenDetails.model_validate(prompt_details)
    if completion_details:
        usage.completion_tokens_details = TokenDetails.model_validate(completion_details)
    return usage


def finish_reason(raw: Any, called_tools: bool) -> str:
    """OpenAI's finish reason; ``ERROR``/``TIMEOUT`` are raised by :func:`raise_failure`."""
    mapped = FINISH_REASONS.get(str(raw), "stop")
    if called_tools and mapped == "stop":
        return "tool_calls"
    return mapped


def raise_failure(raw: Any, error: Any) -> None:
    """Cohere ends a generation it could not finish with ``ERROR`` or ``TIMEOUT``."""
    detail = f": {error}" if isinstance(error, str) and error else "."
    if raw == "TIMEOUT":
        raise UpstreamTimeout(
            f"The upstream provider '{NAME}' timed out while generating{detail}",
            code="upstream_timeout",
        )
    if raw == "ERROR" or (isinstance(error, str) and error):
        raise UpstreamError(
            f"The upstream provider '{NAME}' failed while generating{detail}",
            code="upstream_error",
        )


def _arguments(value: Any) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode() if value is not None else ""


def from_cohere(doc: dict[str, Any], model: str) -> ChatResponse:
    """A non-streaming ``V2ChatResponse`` as a ``chat.completion``."""
    raise_failure(doc.get("finish_reason"), doc.get("error"))
    message = as_object(doc.get("message"))
    texts: list[str] = []
    thinking: list[str] = []
    for item in message.get("content") or ():
        if not isinstance(item, dict):
            continue
        if item.get("type") == "thinking" and isinstance(item.get("thinking"), str):
            thinking.append(item["thinking"])
        elif isinstance(item.get("text"), str):
            texts.append(item["text"])
    calls = [
        MessageToolCall(
            id=str(call.get("id") or f"call_{i}"),
            type="function",
            function=FunctionCall(
                name=as_object(call.get("function")).get("name"),
                arguments=_arguments(as_object(call.get("function")).get("arguments")),
            ),
        )
        for i, call in enumerate(message.get("tool_calls") or ())
        if isinstance(call, dict)
    ]
    plan = message.get("tool_plan") if isinstance(message.get("tool_plan"), str) else ""
    if texts:
        content: str | None = "".join(texts)
    elif calls:
        content = plan or None
    else:
        content = ""
    reply = ResponseMessage(content=content, tool_calls=calls or None)
    if thinking:
        setattr(reply, "reasoning_content", "".join(thinking))  # noqa: B010 - an extra field
    return ChatResponse(
        id=str(doc.get("id") or f"chatcmpl-{os.urandom(12).hex()}"),
        created=int(time.time()),
        model=model,
        choices=[
            ResponseChoice(
                index=0,
                message=reply,
                finish_reason=finish_reason(doc.get("finish_reason"), bool(calls)),
            )
        ],
        usage=usage_from_cohere(doc.get("usage")),
    )


def _path(doc: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


class StreamTranslator:
    """Cohere stream events in, ``chat.completion.chunk`` objects out (one stream)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = f"chatcmpl-{os.urandom(12).hex()}"
        self.created = int(time.time())
        self.finished = False
        self._role_sent = False
        self._tools: dict[Any, int] = {}

    def _chunk(
        self, delta: ChunkDelta | None = None, finish: str | None = None, **extra: Any
    ) -> ChatChunk:
        delta = delta or ChunkDelta()
        if not self._role_sent:
            delta.role = "assistant"
            self._role_sent = True
        for key, value in extra.items():
            setattr(delta, key, value)
        return ChatChunk(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[ChunkChoice(index=0, delta=delta, finish_reason=finish)],
        )

    def event(self, kind: str, doc: dict[str, Any]) -> list[ChatChunk]:
        if self.finished:
            return []
        if kind == "message-start":
            if doc.get("id"):
                self.id = str(doc["id"])
            return [self._chunk(ChunkDelta(content=""))]
        if kind == "content-delta":
            content = _path(doc, "delta", "message", "content")
            out = []
            if isinstance(_path(content, "thinking"), str) and content["thinking"]:
                out.append(self._chunk(reasoning_content=content["thinking"]))
            if isinstance(_path(content, "text"), str) and content["text"]:
                out.append(self._chunk(ChunkDelta(content=content["text"])))
            return out
        if kind == "tool-plan-delta":
            plan = _path(doc, "delta", "message", "tool_plan")
            return [self._chunk(ChunkDelta(content=plan))] if isinstance(plan, str) and plan else []
        if kind == "tool-call-start":
            return [self._tool_start(doc)]
        if kind == "tool-call-delta":
            arguments = _path(doc, "delta", "message", "tool_calls", "function", "arguments")
            if not isinstance(arguments, str) or not arguments:
                return []
            index = self._tools.get(doc.get("index"), len(self._tools) - 1)
            call = ToolCallDelta(index=max(index, 0), function=FunctionCall(arguments=arguments))
            return [self._chunk(ChunkDelta(tool_calls=[call]))]
        if kind == "message-end":
            return self._end(doc)
        if not kind and isinstance(doc.get("message"), str):
            # An error object instead of an event (``{"id": …, "message": …}``).
            raise UpstreamError(
                f"The upstream provider '{NAME}' reported an error: {doc['message']}",
                code="upstream_error",
            )
        # content-start/-end, tool-call-end, citation-*, debug and future event types.
        return []

    def _tool_start(self, doc: dict[str, Any]) -> ChatChunk:
        call = _path(doc, "delta", "message", "tool_calls")
        if isinstance(call, list):  # tolerate a one-element list
            call = call[0] if call else {}
        call = as_object(call)
        index = len(self._tools)
        self._tools[doc.get("index", index)] = index
        function = as_object(call.get("function"))
        start = ToolCallDelta(
            index=index,
            id=str(call.get("id") or f"call_{index}"),
            type="function",
            function=FunctionCall(
                name=function.get("name"), arguments=_arguments(function.get("arguments"))
            ),
        )
        return self._chunk(ChunkDelta(tool_calls=[start]))

    def _end(self, doc: dict[str, Any]) -> list[ChatChunk]:
        delta = as_object(doc.get("delta"))
        raise_failure(delta.get("finish_reason"), delta.get("error"))
        self.finished = True
        out = [self._chunk(finish=finish_reason(delta.get("finish_reason"), bool(self._tools)))]
        usage = usage_from_cohere(delta.get("usage"))
        if usage is not None:
            out.append(
                ChatChunk(
                    id=self.id, created=self.created, model=self.model, choices=[], usage=usage
                )
            )
        return out


# --- the provider ------------------------------------------------------------------------


def _error(status: int, body: bytes, headers: Mapping[str, str]) -> ApiError:
    if status == 498:
        # "Invalid token": the prompt or the answer contains a token Cohere deny-lists.
        mapped = error_from_status(NAME, 400, body, headers)
        mapped.code = "content_filter"
        return mapped
    if status == 499:
        return UpstreamError(
            f"The upstream provider '{NAME}' cancelled the request (HTTP 499).",
            code="upstream_error",
        )
    return error_from_status(NAME, status, body, headers)


class CohereProvider(Provider):
    def __init__(self, config: CohereConfig) -> None:
        self.name = config.name
        self._config = config
        self._url = chat_url(config.base_url)
        self._embed_url = self._url.removesuffix("/chat") + "/embed"
        self._http = UpstreamHttp(config.name, self._url, config.timeouts, config.pool_size)
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {config.api_key}"}
        self._headers = {**headers, "Accept": "application/json"}
        self._stream_headers = {**headers, "Accept": "text/event-stream"}

    def models(self) -> Sequence[str]:
        return self._config.models

    async def start(self) -> None:
        await self._http.start()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, body: dict[str, Any], stream: bool) -> aiohttp.ClientResponse:
        headers = self._stream_headers if stream else self._headers
        return await self._http.post(self._url, orjson.dumps(body), headers, _error)

    async def embed(self, call: EmbedCall) -> Embeddings:
        """``POST /v2/embed`` with float vectors asked for."""
        texts = texts_only(self.name, call)
        data = await embed_wire.post_read(
            self.name,
            self._http,
            self._embed_url,
            embed_wire.cohere_body(call.model, texts, call.request.dimensions),
            self._headers,
            _error,
        )
        return embed_wire.cohere_decode(self.name, data, len(texts))

    async def complete(self, call: UpstreamCall) -> ChatResponse:
        response = await self._send(to_cohere(call, stream=False), stream=False)
        try:
            data = await response.read()
        except aiohttp.ClientError as exc:
            response.close()
            raise interrupted(self.name, exc) from None
        finally:
            response.release()
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict) or not isinstance(doc.get("message"), dict):
            raise UpstreamError(
                f"The upstream provider '{self.name}' sent a malformed response.",
                code="upstream_malformed",
            )
        return from_cohere(doc, call.model)

    async def stream(self, call: UpstreamCall) -> AsyncGenerator[ChatChunk, None]:
        timeouts = self._config.timeouts
        response = await self._send(to_cohere(call, stream=True), stream=True)
        translator = StreamTranslator(call.model)
        upstream = UpstreamStream(self.name, response, timeouts)
        try:
            async for event in upstream.events():
                if event.data == b"[DONE]":
                    continue
                for chunk in translator.event(*self._parse(event.event, event.data)):
                    yield chunk
            if not translator.finished:
                raise interrupted(self.name)
            upstream.complete()
        finally:
            upstream.close()

    def _parse(self, name: str, data: bytes) -> tuple[str, dict[str, Any]]:
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict):
            raise UpstreamError(
                f"The upstream provider '{self.name}' sent a malformed stream event.",
                code="upstream_malformed",
            )
        kind = doc.get("type")
        # The JSON ``type`` is authoritative; the SSE event name only fills a gap.
        return (kind if isinstance(kind, str) else ("" if name == "message" else name)), doc
