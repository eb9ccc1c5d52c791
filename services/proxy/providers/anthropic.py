"""Anthropic Messages API (``POST {base}/v1/messages``) behind the OpenAI chat shape.

The request is built by :mod:`services.proxy.providers.anthropic_translate`; this
module turns the answer back into OpenAI objects (:func:`response_from_message`,
:class:`StreamTranslator`, both pure), maps errors, and does the HTTP.

Configuration (server environment only, the names Anthropic's own SDK reads):

* ``ANTHROPIC_API_KEY`` — sent as ``x-api-key``; enables the provider;
* ``ANTHROPIC_AUTH_TOKEN`` — alternative credential, sent as ``Authorization: Bearer``
  (used only when no API key is set); also enables the provider;
* ``ANTHROPIC_BASE_URL`` — default ``https://api.anthropic.com``; requests go to
  ``{base}/v1/messages`` (a trailing ``/v1`` on the base is tolerated). Without a key
  or token the provider stays off even if a base URL is set;
* ``JETTY_ANTHROPIC_MODELS`` — comma-separated names listed by ``GET /v1/models``
  (default :data:`DEFAULT_MODELS`). Any ``anthropic/<model>`` or bare ``claude-*``
  name routes whether listed or not.

Every request carries ``anthropic-version: 2023-06-01``. Nothing from a client
reaches the URL or a credential header; the one client-influenced header is
``anthropic-beta``, built from an ``anthropic_beta`` extra (list or comma string)
whose values must be plain tokens (``[A-Za-z0-9][A-Za-z0-9._-]*``), so unknown betas
pass through (claude-code sends many) but nothing can be smuggled into a header.

Mapping decisions where the two APIs differ (lossy on purpose, documented here):

* **System messages.** ``system``/``developer`` messages before the first other
  message become the top-level ``system`` (text blocks, in order). A system message
  *later* in the conversation stays where it is, as a user-turn text block wrapped
  in ``<system-reminder>…</system-reminder>`` (the convention Claude models know from
  Claude Code). Moving it to the top would change what it refers to, bust the
  prompt cache, and leave a conversation ending in an assistant turn (a prefill).
* **Turns.** Consecutive same-role messages are merged into one turn; ``tool``
  messages become ``tool_result`` blocks in a user turn (placed before any other
  block of that turn, as Anthropic requires); assistant ``tool_calls`` become
  ``tool_use`` blocks (arguments must be a JSON object, else 400). Empty text is
  dropped (Anthropic rejects empty text blocks); ``name`` fields are dropped; the
  legacy ``function`` role is a 400.
* **Content.** ``image_url`` http(s) → ``source.type=url``; a base64 data URL →
  ``source.type=base64`` with its media type (jpeg/png/gif/webp, else 400);
  ``file`` parts with PDF ``file_data`` → ``document`` blocks; ``cache_control`` on a
  part (or on a message: its last block) and on a tool is forwarded; other part
  types (audio, file ids) are a 400.
* **Parameters.** ``max_completion_tokens`` or ``max_tokens`` → ``max_tokens``; when
  the client gives none, a per-family default (:data:`~.anthropic_translate.MODEL_PROFILES`:
  4096 for Claude 3, 8192 for 3.5, 16384 otherwise). ``temperature`` is clamped to
  Anthropic's 0..1; with both ``temperature`` and ``top_p``, only ``temperature`` is
  sent (recent models reject both); models that reject sampling parameters (Opus 4.7
  and unknown newer names) get none. ``stop`` → ``stop_sequences``. ``n`` > 1 is a
  400 (one choice per request). ``user``/``safety_identifier`` → ``metadata.user_id``.
  ``seed``, penalties, ``logit_bias``, ``logprobs``, OpenAI ``metadata``/``store``/
  ``service_tier`` and other OpenAI-only fields are dropped. Anthropic-native extras
  ``top_k``, ``thinking``, ``output_config``, ``cache_control``,
  ``context_management``, ``inference_geo`` are forwarded as given.
* **Tools.** ``function`` tools → ``{name, description, input_schema, strict}``; other
  tool types are forwarded verbatim (Anthropic server tools). ``tool_choice``:
  ``auto``→``auto``, ``required``→``any``, ``none``→``none``, a named function →
  ``{"type":"tool"}``; ``parallel_tool_calls: false`` → ``disable_parallel_tool_use``.
* **Structured output.** ``response_format`` ``json_schema`` →
  ``output_config.format = {"type": "json_schema", "schema": …}`` (always strict on
  Anthropic's side). ``json_object`` has no Anthropic equivalent: a system
  instruction asking for a single JSON object is appended instead.
* **Reasoning.** ``reasoning_effort`` → on budget models (3.7, 4.0 to 4.5)
  ``thinking = {"type":"enabled","budget_tokens": B}`` with B = 1024 / 2048 / 8192 /
  16384 / 24576 for minimal / low / medium / high / xhigh, bounded by the client's
  max tokens (which, as in OpenAI, covers reasoning too; ≤ 1024 turns thinking off),
  and without a client limit ``max_tokens`` = B + the default, capped at the model's
  ceiling; on adaptive models (4.6 and later) ``thinking = {"type":"adaptive"}`` +
  ``output_config.effort`` (minimal→low). ``none``, Claude 3/3.5, and a forced tool
  choice (which Anthropic refuses with thinking) mean no thinking. With thinking on,
  ``temperature``/``top_k`` are dropped and ``top_p`` is kept only ≥ 0.95.
* **Answer.** Text blocks are joined into ``content`` (``null`` when there are only
  tool calls); ``tool_use`` → ``tool_calls`` (``input`` re-serialised as the
  arguments string). Thinking text is kept as ``reasoning_content`` and the native
  blocks (with signatures, and ``redacted_thinking``) as ``thinking_blocks`` — extra
  fields on the message, and on stream deltas (a signed block is sent whole when its
  signature arrives); sending ``thinking_blocks`` back on an assistant message
  replays them. Citations, server-tool blocks and ``stop_details`` are not carried.
* **Finish reasons.** ``end_turn``/``stop_sequence`` → ``stop``; ``max_tokens`` and
  ``model_context_window_exceeded`` → ``length``; ``tool_use`` → ``tool_calls``;
  ``refusal`` → ``content_filter``; ``pause_turn`` (a long server-tool turn paused;
  resending the conversation resumes it) → ``stop``.
* **Usage.** ``prompt_tokens`` = ``input_tokens`` + ``cache_read_input_tokens`` +
  ``cache_creation_input_tokens``; ``prompt_tokens_details.cached_tokens`` (read) and
  ``cache_creation_tokens`` (write); ``completion_tokens_details.reasoning_tokens``
  from ``output_tokens_details.thinking_tokens`` when Anthropic reports it. Streams
  take ``message_start`` usage updated by the cumulative ``message_delta`` usage and
  end with a ``choices: []`` usage chunk; no input count means no usage chunk.
* **Errors.** 429 → 429 with ``Retry-After``; 401/403 (our key) and 402 (our
  billing) → 502 without the upstream's message; 400/404/413 → same status with
  Anthropic's message; 500 and ``529 overloaded_error`` → 502 (``upstream_overloaded``,
  retryable); 504 ``timeout_error`` and our own timeouts → 504. An ``error`` event
  mid-stream is raised after the chunks already yielded, mapped by its type.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from services.proxy.providers.anthropic_translate import Json, build_request
from services.proxy.providers.base import (
    ChatChunk,
    ChatResponse,
    ChunkChoice,
    ChunkDelta,
    CompletionUsage,
    FunctionCall,
    MessageToolCall,
    Provider,
    ResponseChoice,
    ResponseMessage,
    TokenDetails,
    ToolCallDelta,
    UpstreamCall,
)
from services.proxy.providers.http import UpstreamHttp, UpstreamStream, interrupted
from services.proxy.providers.openai_compat import (
    Timeouts,
    error_from_status,
    retry_after_seconds,
)
from shared.errors import (
    ApiError,
    InvalidRequest,
    PayloadTooLarge,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
)

log = logging.getLogger(__name__)

NAME = "anthropic"
SETUP_HINT = "set ANTHROPIC_API_KEY (and ANTHROPIC_BASE_URL for another endpoint)"
BARE_PATTERNS: tuple[str, ...] = ("claude-*",)
DEFAULT_MODELS: tuple[str, ...] = (
    "claude-opus-4-7",
    "claude-opus-4-6",
    "claude-sonnet-4-6",
    "claude-opus-4-5",
    "claude-sonnet-4-5",
    "claude-haiku-4-5",
    "claude-opus-4-1",
)
DEFAULT_BASE_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"


STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    # A server-tool turn the API paused; resending the conversation continues it.
    "pause_turn": "stop",
}


def finish_reason(stop_reason: str | None) -> str:
    return STOP_REASONS.get(stop_reason or "end_turn", "stop")


# --- response --------------------------------------------------------------------------------


def usage_from(raw: Mapping[str, Any] | None) -> CompletionUsage | None:
    """OpenAI usage from Anthropic's; ``None`` unless the input count is known."""
    if not raw or not isinstance(raw.get("input_tokens"), int):
        return None
    read = raw.get("cache_read_input_tokens") or 0
    write = raw.get("cache_creation_input_tokens") or 0
    prompt = raw["input_tokens"] + read + write
    completion = raw.get("output_tokens") or 0
    prompt_details = TokenDetails(cached_tokens=read, cache_creation_tokens=write)
    # The part of the cache writes made with the 1-hour TTL (priced higher).
    by_ttl = raw.get("cache_creation")
    one_hour = by_ttl.get("ephemeral_1h_input_tokens") if isinstance(by_ttl, dict) else None
    if isinstance(one_hour, int) and one_hour > 0:
        prompt_details = TokenDetails(
            cached_tokens=read,
            cache_creation_tokens=write,
            cache_creation_1h_tokens=one_hour,
        )
    usage = CompletionUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=prompt_details,
    )
    details = raw.get("output_tokens_details")
    if isinstance(details, dict) and isinstance(details.get("thinking_tokens"), int):
        usage.completion_tokens_details = TokenDetails(reasoning_tokens=details["thinking_tokens"])
    return usage


def response_from_message(doc: Json, model: str) -> ChatResponse:
    texts: list[str] = []
    reasoning: list[str] = []
    thinking_blocks: list[Json] = []
    tool_calls: list[MessageToolCall] = []
    for block in doc.get("content") or ():
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            tool_calls.append(
                MessageToolCall(
                    id=block.get("id", ""),
                    function=FunctionCall(name=block.get("name", ""), arguments=arguments),
                )
            )
        elif kind == "thinking":
            reasoning.append(block.get("thinking", ""))
            thinking_blocks.append(block)
        elif kind == "redacted_thinking":
            thinking_blocks.append(block)
    content = "".join(texts) if texts or not tool_calls else None
    if thinking_blocks:
        message = ResponseMessage(
            content=content,
            tool_calls=tool_calls or None,
            reasoning_content="".join(reasoning),
            thinking_blocks=thinking_blocks,
        )
    else:
        message = ResponseMessage(content=content, tool_calls=tool_calls or None)
    return ChatResponse(
        id=doc.get("id", ""),
        created=int(time.time()),
        model=doc.get("model") or model,
        choices=[
            ResponseChoice(message=message, finish_reason=finish_reason(doc.get("stop_reason")))
        ],
        usage=usage_from(doc.get("usage")),
    )


# --- errors ----------------------------------------------------------------------------------

_EVENT_ERRORS: dict[str, type[ApiError]] = {
    "rate_limit_error": RateLimited,
    "timeout_error": UpstreamTimeout,
    "request_too_large": PayloadTooLarge,
    "invalid_request_error": InvalidRequest,
}


def error_from_event(provider: str, payload: Any) -> ApiError:
    """An ``error`` event inside a stream (or a 200 body that is an error)."""
    err = payload.get("error") if isinstance(payload, dict) else None
    err = err if isinstance(err, dict) else {}
    kind = str(err.get("type") or "api_error")
    message = err.get("message") if isinstance(err.get("message"), str) else None
    cls = _EVENT_ERRORS.get(kind)
    if cls is not None:
        return cls(message or f"The upstream provider '{provider}' reported {kind}.", code=kind)
    code = "upstream_overloaded" if kind == "overloaded_error" else "upstream_error"
    return UpstreamError(
        f"The upstream provider '{provider}' failed mid-stream ({kind})"
        + (f": {message}" if message else "."),
        code=code,
    )


# --- streaming -------------------------------------------------------------------------------


class StreamTranslator:
    """Feeds on Messages SSE events, yields OpenAI chunks.

    A stream is complete only after ``message_stop`` (:attr:`done`); the finish
    chunk and the usage chunk are emitted then, because ``message_delta`` may come
    more than once and its usage is cumulative.
    """

    __slots__ = (
        "_reasoning",
        "_stop_reason",
        "_tools",
        "_usage",
        "created",
        "done",
        "id",
        "model",
        "provider",
    )

    def __init__(self, model: str, provider: str = "anthropic") -> None:
        self.id = ""
        self.model = model
        self.provider = provider
        self.created = int(time.time())
        self.done = False
        self._usage: Json = {}
        self._stop_reason: str | None = None
        self._tools: dict[int, int] = {}  # content block index → OpenAI tool-call index
        self._reasoning: dict[int, list[str]] = {}  # thinking block index → text pieces

    def _chunk(self, delta: ChunkDelta, finish: str | None = None) -> ChatChunk:
        return ChatChunk(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[ChunkChoice(delta=delta, finish_reason=finish)],
        )

    def feed(self, event: str, data: bytes) -> list[ChatChunk]:
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict):
            raise UpstreamError(
                f"The upstream provider '{self.provider}' sent a malformed stream event.",
                code="upstream_malformed",
            )
        kind = doc.get("type") or event
        if kind == "content_block_delta":
            return self._delta(doc.get("index", 0), doc.get("delta") or {})
        if kind == "content_block_start":
            return self._block_start(doc.get("index", 0), doc.get("content_block") or {})
        if kind == "message_start":
            message = doc.get("message") or {}
            self.id = message.get("id") or self.id
            self.model = message.get("model") or self.model
            if isinstance(message.get("usage"), dict):
                self._usage.update(message["usage"])
            # Role only: whether text or only tool calls follow is not known yet, and a
            # pure tool-call answer must keep content null.
            return [self._chunk(ChunkDelta(role="assistant"))]
        if kind == "message_delta":
            delta = doc.get("delta") or {}
            self._stop_reason = delta.get("stop_reason") or self._stop_reason
            usage = doc.get("usage")
            if isinstance(usage, dict):
                self._usage.update({k: v for k, v in usage.items() if v is not None})
            return []
        if kind == "message_stop":
            self.done = True
            chunks = [self._chunk(ChunkDelta(), finish_reason(self._stop_reason))]
            usage = usage_from(self._usage)
            if usage is not None:
                chunks.append(
                    ChatChunk(
                        id=self.id, created=self.created, model=self.model, choices=[], usage=usage
                    )
                )
            return chunks
        if kind == "error":
            raise error_from_event(self.provider, doc)
        # ping, content_block_stop and event types added later carry nothing for us.
        return []

    def _block_start(self, index: int, block: Json) -> list[ChatChunk]:
        kind = block.get("type")
        if kind == "text" and block.get("text"):
            return [self._chunk(ChunkDelta(content=block["text"]))]
        if kind == "tool_use":
            position = self._tools[index] = len(self._tools)
            arguments = orjson.dumps(block["input"]).decode() if block.get("input") else ""
            call = ToolCallDelta(
                index=position,
                id=block.get("id", ""),
                type="function",
                function=FunctionCall(name=block.get("name", ""), arguments=arguments),
            )
            return [self._chunk(ChunkDelta(tool_calls=[call]))]
        if kind == "thinking":
            text = block.get("thinking") or ""
            self._reasoning[index] = [text]
            return [self._chunk(ChunkDelta(reasoning_content=text))] if text else []
        if kind == "redacted_thinking":
            return [self._chunk(ChunkDelta(thinking_blocks=[block]))]
        return []

    def _delta(self, index: int, delta: Json) -> list[ChatChunk]:
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text")
            return [self._chunk(ChunkDelta(content=text))] if text else []
        if kind == "input_json_delta":
            piece = delta.get("partial_json")
            position = self._tools.get(index)
            if not piece or position is None:
                return []
            call = ToolCallDelta(index=position, function=FunctionCall(arguments=piece))
            return [self._chunk(ChunkDelta(tool_calls=[call]))]
        if kind == "thinking_delta":
            text = delta.get("thinking")
            if not text:
                return []
            self._reasoning.setdefault(index, []).append(text)
            return [self._chunk(ChunkDelta(reasoning_content=text))]
        if kind == "signature_delta":
            # The signature closes a thinking block: hand the client the whole signed
            # block so it can send it back on the next turn.
            block = {
                "type": "thinking",
                "thinking": "".join(self._reasoning.get(index, ())),
                "signature": delta.get("signature", ""),
            }
            return [self._chunk(ChunkDelta(thinking_blocks=[block]))]
        return []


# --- HTTP ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AnthropicConfig:
    name: str = NAME
    base_url: str = DEFAULT_BASE_URL
    # repr=False: credentials must never reach a log line through a repr.
    api_key: str | None = field(default=None, repr=False)
    auth_token: str | None = field(default=None, repr=False)
    models: tuple[str, ...] = DEFAULT_MODELS
    timeouts: Timeouts = field(default_factory=Timeouts)
    pool_size: int = 1024


def from_env(env: Mapping[str, str], timeouts: Timeouts, pool_size: int) -> Provider | None:
    """The provider when ``ANTHROPIC_API_KEY`` or ``ANTHROPIC_AUTH_TOKEN`` is set."""
    api_key = env.get("ANTHROPIC_API_KEY", "").strip() or None
    auth_token = env.get("ANTHROPIC_AUTH_TOKEN", "").strip() or None
    if api_key is None and auth_token is None:
        return None
    base_url = env.get("ANTHROPIC_BASE_URL", "").strip() or DEFAULT_BASE_URL
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise ValueError("ANTHROPIC_BASE_URL must be an http(s) URL without a query string.")
    listed = tuple(m.strip() for m in env.get("JETTY_ANTHROPIC_MODELS", "").split(",") if m.strip())
    return AnthropicProvider(
        AnthropicConfig(
            base_url=base_url,
            api_key=api_key,
            auth_token=auth_token,
            models=listed or DEFAULT_MODELS,
            timeouts=timeouts,
            pool_size=pool_size,
        )
    )


def _error_message(body: bytes) -> str | None:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    err = doc.get("error") if isinstance(doc, dict) else None
    message = err.get("message") if isinstance(err, dict) else None
    return message if isinstance(message, str) and message else None


def error_from_response(
    provider: str, status: int, body: bytes, headers: Mapping[str, str]
) -> ApiError:
    """An Anthropic HTTP error (``{"type":"error","error":{"type","message"}}``) mapped."""
    if status == 529:
        message = _error_message(body)
        return UpstreamError(
            f"The upstream provider '{provider}' is overloaded (HTTP 529)"
            + (f": {message}" if message else "."),
            code="upstream_overloaded",
            # Retryable: the router's backoff honours the API's hint when it sends one.
            retry_after=retry_after_seconds(headers),
        )
    if status == 402:
        # Our account's billing, never the client's problem; the message is not echoed.
        return UpstreamError(
            f"The upstream provider '{provider}' refused this server's account (HTTP 402). "
            "This is a server configuration problem.",
            code="upstream_billing",
        )
    if status == 504:
        return UpstreamTimeout(
            f"The upstream provider '{provider}' timed out (HTTP 504).", code="upstream_timeout"
        )
    return error_from_status(provider, status, body, headers)


class AnthropicProvider(Provider):
    def __init__(self, config: AnthropicConfig) -> None:
        self.name = config.name
        self._config = config
        base = config.base_url.rstrip("/")
        base = base.removesuffix("/v1")
        self._url = base + "/v1/messages"
        self._http = UpstreamHttp(config.name, self._url, config.timeouts, config.pool_size)
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "anthropic-version": ANTHROPIC_VERSION,
        }
        if config.api_key:
            headers["x-api-key"] = config.api_key
        elif config.auth_token:
            headers["Authorization"] = f"Bearer {config.auth_token}"
        self._headers = headers

    def models(self) -> Sequence[str]:
        return self._config.models

    async def start(self) -> None:
        await self._http.start()

    async def aclose(self) -> None:
        await self._http.aclose()

    def _error(self, status: int, body: bytes, headers: Mapping[str, str]) -> ApiError:
        return error_from_response(self.name, status, body, headers)

    async def _send(self, call: UpstreamCall, stream: bool) -> aiohttp.ClientResponse:
        body, betas = build_request(call, stream=stream)
        headers = self._headers
        if betas:
            headers = {**headers, "anthropic-beta": ",".join(betas)}
        return await self._http.post(self._url, orjson.dumps(body), headers, self._error)

    async def complete(self, call: UpstreamCall) -> ChatResponse:
        response = await self._send(call, stream=False)
        try:
            data = await response.read()
        except aiohttp.ClientError as exc:
            response.close()
            raise interrupted(self.name, exc) from None
        finally:
            response.release()
        try:
            doc: Any = orjson.loads(data)
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, dict) and doc.get("type") == "error":
            raise error_from_event(self.name, doc)
        if not isinstance(doc, dict) or not isinstance(doc.get("content"), list):
            raise UpstreamError(
                f"The upstream provider '{self.name}' sent a malformed response.",
                code="upstream_malformed",
            )
        return response_from_message(doc, call.model)

    async def stream(self, call: UpstreamCall) -> AsyncGenerator[ChatChunk, None]:
        timeouts = self._config.timeouts
        response = await self._send(call, stream=True)
        upstream = UpstreamStream(self.name, response, timeouts)
        try:
            translator = StreamTranslator(call.model, self.name)
            async for event in upstream.events():
                for chunk in translator.feed(event.event, event.data):
                    yield chunk
                if translator.done:
                    upstream.complete()
                    return
            # EOF before message_stop: the answer is incomplete.
            raise interrupted(self.name)
        finally:
            upstream.close()
