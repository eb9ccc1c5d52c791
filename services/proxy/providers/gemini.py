"""Google Gemini API (``generativelanguage.googleapis.com``) behind the OpenAI shape.

``POST {base}/v1beta/models/{model}:generateContent`` for complete calls and
``:streamGenerateContent?alt=sse`` for streams, authenticated with the
``x-goog-api-key`` header (never the ``?key=`` query, which ends up in logs). The
request side is :mod:`services.proxy.providers.gemini_translate`; this module
sends it, and maps responses, stream documents and errors back.

Configuration (:func:`from_env`; the names google-genai and gemini-cli read):

==========================  ========================================================
``GEMINI_API_KEY``          the key; enables the provider
``GOOGLE_API_KEY``          accepted when ``GEMINI_API_KEY`` is unset (google-genai
                            prefers it when both are set; we prefer the Gemini-only
                            name, since ``GOOGLE_API_KEY`` is often some other
                            Google API's key)
``GEMINI_BASE_URL``         default ``https://generativelanguage.googleapis.com``;
                            ``GOOGLE_GEMINI_BASE_URL`` (google-genai's name) too. A
                            base URL alone enables a keyless provider (a local
                            Gemini-compatible server). ``/v1beta`` is appended
                            unless the URL already ends in an API version.
``JETTY_GEMINI_MODELS``     comma-separated names for ``GET /v1/models``
                            (default :data:`DEFAULT_MODELS`)
==========================  ========================================================

Routing: ``gemini/<model>`` and bare ``gemini-*``. The model name lands in the URL
path, so it must look like a model id (``[A-Za-z0-9][A-Za-z0-9._-]*``, optionally
``models/`` or ``tunedModels/``); anything else is a 400, never a path on our host.

Translation, and where it is lossy:

* **System messages.** Gemini has one ``systemInstruction``. Every ``system`` and
  ``developer`` message goes there, one text part each, in order — including one in
  the middle of the conversation, which thereby loses its position (it is not
  re-sent as user text, which would give a system instruction a user's authority).
  Non-text parts in a system message are a 400, as at OpenAI.
* **Turns.** user → ``user``, assistant → ``model``; consecutive turns of one role
  are merged into one ``Content`` (tool results of one step must travel together).
  Empty text parts are dropped (Gemini rejects them).
* **Images.** ``data:`` URLs → ``inlineData``; ``http(s)://`` and ``gs://`` URLs →
  ``fileData {fileUri}`` with a MIME type guessed from the file suffix (omitted when
  unknown). Gemini fetches the URL itself — we never download what a client names —
  so the upstream's limits apply (public or signed URLs and Files API URIs, up to
  100 MB; some 2.0-family models take only Files API URIs). ``detail`` is dropped.
  ``input_audio`` (wav/mp3) and ``file`` parts with a base64 ``file_data`` map to
  ``inlineData``; OpenAI ``file_id``s cannot be resolved (400).
* **Tool calls.** Assistant ``tool_calls`` → ``functionCall {name, args}`` parts
  (arguments must be a JSON object); ``tool`` messages → ``functionResponse {name,
  response}`` in a ``user`` turn, the name looked up from the earlier call with that
  ``tool_call_id``. A tool result that is a JSON object is sent as the response
  object, anything else as ``{"output": <text>}``. Gemini call ids are not sent back
  (pairing is by order). Answers: a ``functionCall`` without an ``id`` (all but the
  newest models) gets ``call_<token>_<n>``, stable within the response and unique
  across responses; the arguments arrive whole, so a stream sends each call in one
  delta.
* **Thought signatures.** A ``functionCall``'s ``thoughtSignature`` is returned on
  the tool call as ``extra_content.google.thought_signature`` (the convention of
  Google's own OpenAI-compatible endpoint) and sent back from there. When a step's
  first call has none (history from another model, or a client that dropped the
  field), Google's documented ``skip_thought_signature_validator`` is sent, so
  Gemini 3 accepts the history. Signatures on text parts are not carried.
* **Tools.** ``tools`` → one ``functionDeclarations`` tool; ``parameters`` converted
  from JSON Schema to Gemini's OpenAPI subset (see
  :func:`~services.proxy.providers.gemini_translate.to_gemini_schema`: ``$ref``
  inlined, ``additionalProperties``/``$schema``/``not``/numeric ``enum``/unsupported
  ``format``… dropped, free-form objects untyped, a parameterless function gets no
  ``parameters``). ``tool_choice`` none/auto/required → ``NONE``/``AUTO``/``ANY``; a
  named function → ``ANY`` + ``allowedFunctionNames``; ``allowed_tools`` "auto"
  offers only the allowed declarations. ``parallel_tool_calls`` has no equivalent
  (dropped); non-function tools are a 400.
* **Parameters.** temperature, top_p, max_completion_tokens/max_tokens →
  ``maxOutputTokens``, stop → ``stopSequences``, n → ``candidateCount``, seed,
  presence/frequency_penalty, ``response_format`` json_object → ``responseMimeType``
  ``application/json`` (json_schema adds ``responseSchema``), ``reasoning_effort`` →
  ``thinkingConfig`` (``thinkingBudget`` 0/1024/8192/24576 on 2.5, ``thinkingLevel``
  on 3+, nothing before 2.5). Everything else OpenAI-only (logprobs, logit_bias,
  user, metadata, store, service_tier…) is not sent. Gemini's safety settings stay
  at their defaults.
* **Finish reasons.** STOP → ``stop`` (``tool_calls`` when the candidate called a
  function), MAX_TOKENS → ``length``; SAFETY, RECITATION, BLOCKLIST,
  PROHIBITED_CONTENT, SPII and the IMAGE_* ones → ``content_filter``; anything else
  (OTHER, LANGUAGE, MALFORMED_FUNCTION_CALL…) → ``stop``.
* **Blocked prompts.** ``promptFeedback.blockReason`` without candidates is a 400
  ``content_filter`` error naming the reason (as Azure OpenAI answers a filtered
  prompt), in streams too (it is the first document); its usage is not recorded.
* **Usage.** ``promptTokenCount`` (+ ``toolUsePromptTokenCount``) → prompt_tokens;
  ``candidatesTokenCount`` + ``thoughtsTokenCount`` → completion_tokens (thinking is
  billed as output, as OpenAI counts reasoning); ``cachedContentTokenCount`` →
  ``prompt_tokens_details.cached_tokens``; ``thoughtsTokenCount`` →
  ``completion_tokens_details.reasoning_tokens``. Gemini has no cache-write count.
  Streams repeat cumulative usage on every document; the last one is sent once,
  after the finish chunks. ``thought`` parts (only sent when asked for) become
  ``reasoning_content``; code execution and image output parts are not mapped.
* **Errors.** ``{"error": {"code", "message", "status", "details"}}`` (also wrapped in
  a list): 429 RESOURCE_EXHAUSTED → 429 with ``Retry-After`` or else the
  ``RetryInfo.retryDelay``; 401/403 and 400 ``API_KEY_INVALID`` (how Gemini rejects a
  bad key) → 502 ``upstream_auth_failed`` without the upstream's message; 504
  DEADLINE_EXCEEDED and 408 → 504; other 4xx → same status with Gemini's message
  (404 → ``model_not_found``); 5xx (503 UNAVAILABLE "overloaded") → 502. An
  ``{"error"}`` document inside a stream → 502 after the chunks already sent; a
  stream that ends before every candidate's finish reason (Gemini sends no
  ``[DONE]``) → 502 ``upstream_stream_interrupted``.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

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
from services.proxy.providers.gemini_translate import encode_request
from services.proxy.providers.http import UpstreamHttp, UpstreamStream, interrupted
from services.proxy.providers.openai_compat import Timeouts, retry_after_seconds
from shared.errors import (
    ApiError,
    InvalidRequest,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
)

NAME = "gemini"
SETUP_HINT = "set GEMINI_API_KEY (and GEMINI_BASE_URL for another endpoint)"
BARE_PATTERNS: tuple[str, ...] = ("gemini-*",)
DEFAULT_MODELS: tuple[str, ...] = (
    "gemini-2.5-pro",
    "gemini-2.5-flash",
    "gemini-2.5-flash-lite",
    "gemini-3-pro-preview",
    "gemini-3-flash-preview",
)
DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
API_VERSION = "v1beta"

JSON = dict[str, Any]

_MODEL_ID = re.compile(r"(?:tunedModels/)?[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_RETRY_DELAY = re.compile(r"(\d+(?:\.\d+)?)s")


@dataclass(frozen=True, slots=True)
class GeminiConfig:
    name: str = NAME
    base_url: str = DEFAULT_BASE_URL
    # repr=False: the key must never reach a log line through a repr.
    api_key: str | None = field(default=None, repr=False)
    models: tuple[str, ...] = DEFAULT_MODELS
    timeouts: Timeouts = field(default_factory=Timeouts)
    pool_size: int = 1024


def from_env(env: Mapping[str, str], timeouts: Timeouts, pool_size: int) -> GeminiProvider | None:
    """The provider when a key or a base URL is configured (see the module docstring)."""
    key = (env.get("GEMINI_API_KEY") or env.get("GOOGLE_API_KEY") or "").strip() or None
    base = (env.get("GEMINI_BASE_URL") or env.get("GOOGLE_GEMINI_BASE_URL") or "").strip()
    if key is None and not base:
        return None
    listed = tuple(m.strip() for m in env.get("JETTY_GEMINI_MODELS", "").split(",") if m.strip())
    return GeminiProvider(
        GeminiConfig(
            base_url=base or DEFAULT_BASE_URL,
            api_key=key,
            models=listed or DEFAULT_MODELS,
            timeouts=timeouts,
            pool_size=pool_size,
        )
    )


def api_root(base_url: str) -> str:
    root = base_url.rstrip("/")
    return root if re.search(r"/v1(?:alpha|beta)?$", root) else f"{root}/{API_VERSION}"


def model_path(model: str) -> str:
    """``models/<id>`` (or ``tunedModels/<id>``) for the URL; the client chose the
    name, so anything that could change the path is refused."""
    name = model.removeprefix("models/")
    if not _MODEL_ID.fullmatch(name):
        raise InvalidRequest(
            f"'{model}' is not a valid Gemini model name.", param="model", code="invalid_value"
        )
    return name if name.startswith("tunedModels/") else f"models/{name}"


# --- errors ----------------------------------------------------------------------------


def _error_object(body: bytes) -> JSON:
    try:
        doc = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return {"message": text[:500]} if text else {}
    if isinstance(doc, list) and doc:  # streamGenerateContent without alt=sse wraps it
        doc = doc[0]
    error = doc.get("error") if isinstance(doc, dict) else None
    return error if isinstance(error, dict) else {}


def _retry_delay(details: Any) -> float | None:
    for detail in details if isinstance(details, list) else ():
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
            match = _RETRY_DELAY.fullmatch(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None


def error_from_status(
    provider: str, status: int, body: bytes, headers: Mapping[str, str]
) -> ApiError:
    """Map a Gemini HTTP error to what our client should see (module docstring)."""
    error = _error_object(body)
    message = error.get("message") if isinstance(error.get("message"), str) else None
    state = error.get("status") if isinstance(error.get("status"), str) else None
    details = error.get("details")
    reasons = (
        {d.get("reason") for d in details if isinstance(d, dict)}
        if isinstance(details, list)
        else set()
    )
    if (
        status in (401, 403)
        or "API_KEY_INVALID" in reasons
        or state in ("UNAUTHENTICATED", "PERMISSION_DENIED")
    ):
        # Our key failed, not the client's token; Gemini's message is not echoed.
        return UpstreamError(
            f"The upstream provider '{provider}' rejected this server's credentials "
            f"(HTTP {status}). This is a server configuration problem.",
            code="upstream_auth_failed",
        )
    if status == 429:
        retry_after = retry_after_seconds(headers)
        return RateLimited(
            message or f"The upstream provider '{provider}' is rate limiting requests.",
            code="rate_limit_exceeded",
            retry_after=retry_after if retry_after is not None else _retry_delay(details),
        )
    if status in (408, 504) or state == "DEADLINE_EXCEEDED":
        return UpstreamTimeout(
            f"The upstream provider '{provider}' timed out (HTTP {status})"
            + (f": {message}" if message else "."),
            code="upstream_timeout",
        )
    if 400 <= status < 500:
        return ApiError(
            message or f"The upstream provider '{provider}' rejected the request (HTTP {status}).",
            status=status,
            error_type="invalid_request_error",
            param="model" if status == 404 else None,
            code="model_not_found" if status == 404 else (state or "").lower() or None,
        )
    return UpstreamError(
        f"The upstream provider '{provider}' failed (HTTP {status})"
        + (f": {message}" if message else "."),
        code="upstream_overloaded" if status == 503 else "upstream_error",
    )


def stream_error(provider: str, error: Mapping[str, Any]) -> ApiError:
    """An ``{"error": …}`` document inside a 200 stream: the call already started, so
    whatever Gemini says it is a failed upstream (502), with Gemini's message."""
    message = error.get("message")
    state = error.get("status")
    return UpstreamError(
        f"The upstream provider '{provider}' failed mid-stream"
        + (f": {message}" if isinstance(message, str) and message else "."),
        code=state.lower() if isinstance(state, str) and state else "upstream_error",
    )


FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
}


# --- responses -------------------------------------------------------------------------


def _document(data: bytes, provider: str) -> JSON:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        raise UpstreamError(
            f"The upstream provider '{provider}' sent a malformed response.",
            code="upstream_malformed",
        )
    return doc


def prompt_blocked(provider: str, feedback: Mapping[str, Any]) -> ApiError:
    reason = feedback.get("blockReason")
    detail = feedback.get("blockReasonMessage")
    return ApiError(
        f"The upstream provider '{provider}' blocked the prompt (blockReason: {reason})"
        + (f": {detail}" if isinstance(detail, str) and detail else "."),
        status=400,
        error_type="invalid_request_error",
        param="messages",
        code="content_filter",
    )


def usage_from(meta: Any) -> CompletionUsage | None:
    """OpenAI usage from ``usageMetadata``. Thinking tokens are billed as output, so
    they count in ``completion_tokens`` (as OpenAI's reasoning tokens do) and are
    broken out as ``reasoning_tokens``; cached prompt tokens are a subset of
    ``prompt_tokens``."""
    if not isinstance(meta, dict):
        return None

    def count(key: str) -> int:
        value = meta.get(key)
        return value if isinstance(value, int) else 0

    prompt = count("promptTokenCount") + count("toolUsePromptTokenCount")
    reasoning = count("thoughtsTokenCount")
    completion = count("candidatesTokenCount") + reasoning
    return CompletionUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=count("totalTokenCount") or prompt + completion,
        prompt_tokens_details=TokenDetails(cached_tokens=count("cachedContentTokenCount")),
        completion_tokens_details=TokenDetails(reasoning_tokens=reasoning),
    )


class _Parts:
    """What one candidate's parts say, in OpenAI terms."""

    __slots__ = ("calls", "reasoning", "text")

    def __init__(self, candidate: Mapping[str, Any]) -> None:
        self.text: list[str] = []
        self.reasoning: list[str] = []
        # (upstream id or None, name, JSON arguments, thought signature or None)
        self.calls: list[tuple[str | None, str, str, str | None]] = []
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else ():
            if not isinstance(part, dict):
                continue
            text = part.get("text")
            call = part.get("functionCall")
            if isinstance(call, dict) and isinstance(call.get("name"), str):
                ident = call.get("id")
                signature = part.get("thoughtSignature")
                self.calls.append(
                    (
                        ident if isinstance(ident, str) and ident else None,
                        call["name"],
                        orjson.dumps(call.get("args") or {}).decode(),
                        signature if isinstance(signature, str) else None,
                    )
                )
            elif isinstance(text, str) and text:
                (self.reasoning if part.get("thought") is True else self.text).append(text)
            # executableCode, inlineData output, empty signature-only text: not mapped

    def reasoning_extra(self) -> JSON:
        """Thought summaries (only sent when asked for) as ``reasoning_content``, the
        field OpenAI-compatible reasoning servers use."""
        return {"reasoning_content": "".join(self.reasoning)} if self.reasoning else {}


def _finish(candidate: Mapping[str, Any], had_calls: bool) -> str | None:
    reason = candidate.get("finishReason")
    if not isinstance(reason, str) or reason == "FINISH_REASON_UNSPECIFIED":
        return None
    if reason == "STOP" and had_calls:
        return "tool_calls"
    return FINISH_REASONS.get(reason, "stop")


def _extra_content(signature: str | None) -> JSON:
    return {"extra_content": {"google": {"thought_signature": signature}}} if signature else {}


def _candidates(doc: Mapping[str, Any], provider: str) -> list[JSON]:
    candidates = doc.get("candidates")
    if isinstance(candidates, list) and candidates:
        return [c for c in candidates if isinstance(c, dict)]
    feedback = doc.get("promptFeedback")
    if isinstance(feedback, dict) and feedback.get("blockReason"):
        raise prompt_blocked(provider, feedback)
    return []


def _index(candidate: Mapping[str, Any], position: int) -> int:
    index = candidate.get("index")
    return index if isinstance(index, int) else position


class CallIds:
    """Ids for function calls that arrive without one: ``call_<token>_<n>``, stable
    for the whole response (stream or not) and unique across responses, so a client
    that keys tool results by id never sees two calls share one."""

    __slots__ = ("_n", "_token")

    def __init__(self) -> None:
        self._token = os.urandom(6).hex()
        self._n = 0

    def next(self, upstream: str | None) -> str:
        if upstream:
            return upstream
        ident = f"call_{self._token}_{self._n}"
        self._n += 1
        return ident


def decode_response(data: bytes, model: str, provider: str) -> ChatResponse:
    doc = _document(data, provider)
    if isinstance(doc.get("error"), dict):
        raise UpstreamError(
            f"The upstream provider '{provider}' reported an error: {doc['error'].get('message')}",
            code="upstream_error",
        )
    candidates = _candidates(doc, provider)
    if not candidates:
        raise UpstreamError(
            f"The upstream provider '{provider}' returned no candidates.",
            code="upstream_malformed",
        )
    ids = CallIds()
    choices: list[ResponseChoice] = []
    for position, candidate in enumerate(candidates):
        parts = _Parts(candidate)
        message = ResponseMessage(
            content="".join(parts.text) if parts.text else None, **parts.reasoning_extra()
        )
        if parts.calls:
            message.tool_calls = [
                MessageToolCall(
                    id=ids.next(ident),
                    function=FunctionCall(name=name, arguments=args),
                    **_extra_content(signature),
                )
                for ident, name, args, signature in parts.calls
            ]
        choices.append(
            ResponseChoice(
                index=_index(candidate, position),
                message=message,
                finish_reason=_finish(candidate, bool(parts.calls)) or "stop",
            )
        )
    return ChatResponse(
        id=_response_id(doc),
        created=int(time.time()),
        model=_model(doc, model),
        choices=choices,
        usage=usage_from(doc.get("usageMetadata")),
    )


def _response_id(doc: Mapping[str, Any]) -> str:
    ident = doc.get("responseId")
    return ident if isinstance(ident, str) and ident else f"gemini-{os.urandom(12).hex()}"


def _model(doc: Mapping[str, Any], model: str) -> str:
    version = doc.get("modelVersion")
    return version if isinstance(version, str) and version else model


class _CandidateState:
    __slots__ = ("finished", "started", "tools")

    def __init__(self) -> None:
        self.started = False
        self.finished = False
        self.tools = 0


class StreamTranslator:
    """Turns the ``data:`` documents of a ``streamGenerateContent?alt=sse`` response
    (each a whole ``GenerateContentResponse`` carrying only the new parts) into
    OpenAI chunks: role first, then content and complete tool calls (Gemini never
    splits a call's arguments), then the finish chunk per candidate; usage (sent
    cumulatively on every document) once at the end, by :meth:`finish`."""

    def __init__(self, model: str, provider: str) -> None:
        self._model = model
        self._provider = provider
        self._id = ""
        self._created = int(time.time())
        self._usage: CompletionUsage | None = None
        self._ids = CallIds()
        self._candidates: dict[int, _CandidateState] = {}

    @property
    def finished(self) -> bool:
        """Every candidate seen has its finish reason (there is no ``[DONE]``)."""
        return bool(self._candidates) and all(c.finished for c in self._candidates.values())

    def feed(self, data: bytes) -> list[ChatChunk]:
        doc = _document(data, self._provider)
        error = doc.get("error")
        if isinstance(error, dict):
            raise stream_error(self._provider, error)
        if not self._id:
            self._id = _response_id(doc)
            self._model = _model(doc, self._model)
        usage = usage_from(doc.get("usageMetadata"))
        if usage is not None:
            self._usage = usage
        chunks: list[ChatChunk] = []
        for position, candidate in enumerate(_candidates(doc, self._provider)):
            index = _index(candidate, position)
            state = self._candidates.setdefault(index, _CandidateState())
            parts = _Parts(candidate)
            delta = ChunkDelta(**parts.reasoning_extra())
            if parts.text:
                delta.content = "".join(parts.text)
            if parts.calls:
                delta.tool_calls = []
                for ident, name, args, signature in parts.calls:
                    delta.tool_calls.append(
                        ToolCallDelta(
                            index=state.tools,
                            id=self._ids.next(ident),
                            type="function",
                            function=FunctionCall(name=name, arguments=args),
                            **_extra_content(signature),
                        )
                    )
                    state.tools += 1
            finish = _finish(candidate, state.tools > 0)
            has_delta = bool(parts.text or parts.reasoning or parts.calls)
            if not state.started and (has_delta or finish):
                delta.role = "assistant"
                if not parts.calls and delta.content is None:
                    delta.content = ""
                state.started = True
                has_delta = True
            if has_delta:
                chunks.append(self._chunk(index, delta, None))
            if finish and not state.finished:
                state.finished = True
                chunks.append(self._chunk(index, ChunkDelta(), finish))
        return chunks

    def finish(self) -> list[ChatChunk]:
        """The usage-only chunk, when the upstream reported usage."""
        if self._usage is None:
            return []
        return [
            ChatChunk(
                id=self._id, created=self._created, model=self._model, choices=[], usage=self._usage
            )
        ]

    def _chunk(self, index: int, delta: ChunkDelta, finish: str | None) -> ChatChunk:
        return ChatChunk(
            id=self._id,
            created=self._created,
            model=self._model,
            choices=[ChunkChoice(index=index, delta=delta, finish_reason=finish)],
        )


# --- the provider ----------------------------------------------------------------------


class GeminiProvider(Provider):
    def __init__(self, config: GeminiConfig) -> None:
        self.name = config.name
        self._config = config
        self._root = api_root(config.base_url)
        self._http = UpstreamHttp(config.name, self._root, config.timeouts, config.pool_size)
        headers = {"Content-Type": "application/json"}
        if config.api_key:
            headers["x-goog-api-key"] = config.api_key
        self._headers = {**headers, "Accept": "application/json"}
        self._stream_headers = {**headers, "Accept": "text/event-stream"}

    def models(self) -> Sequence[str]:
        return self._config.models

    async def start(self) -> None:
        await self._http.start()

    async def aclose(self) -> None:
        await self._http.aclose()

    def _url(self, model: str, stream: bool) -> str:
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return f"{self._root}/{model_path(model)}:{method}"

    def _scrub(self, error: ApiError) -> ApiError:
        # Belt and braces: no upstream text we pass on may quote our key.
        key = self._config.api_key
        if key and key in error.message:
            error.message = error.message.replace(key, "***")
            error.args = (error.message,)
        return error

    def _error(self, status: int, body: bytes, headers: Mapping[str, str]) -> ApiError:
        return self._scrub(error_from_status(self.name, status, body, headers))

    async def _send(self, url: str, body: bytes, stream: bool) -> aiohttp.ClientResponse:
        headers = self._stream_headers if stream else self._headers
        return await self._http.post(url, body, headers, self._error)

    async def complete(self, call: UpstreamCall) -> ChatResponse:
        url = self._url(call.model, stream=False)
        body = encode_request(call.request, call.model)
        response = await self._send(url, body, stream=False)
        try:
            data = await response.read()
        except aiohttp.ClientError as exc:
            response.close()
            raise interrupted(self.name, exc) from None
        finally:
            response.release()
        try:
            return decode_response(data, call.model, self.name)
        except ApiError as error:
            raise self._scrub(error) from None

    async def stream(self, call: UpstreamCall) -> AsyncGenerator[ChatChunk, None]:
        timeouts = self._config.timeouts
        url = self._url(call.model, stream=True)
        translator = StreamTranslator(call.model, self.name)
        response = await self._send(url, encode_request(call.request, call.model), stream=True)
        upstream = UpstreamStream(self.name, response, timeouts)
        try:
            async for event in upstream.events():
                try:
                    chunks = translator.feed(event.data)
                except ApiError as error:
                    raise self._scrub(error) from None
                for chunk in chunks:
                    yield chunk
            # No [DONE] in Gemini streams: complete means every candidate finished.
            if not translator.finished or upstream.pending:
                raise interrupted(self.name)
            for chunk in translator.finish():
                yield chunk
            upstream.complete()
        finally:
            upstream.close()
