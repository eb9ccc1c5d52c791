"""Gemini responses, streams and errors back in the OpenAI chat shape (no I/O).

The mapping decisions are listed in :mod:`services.proxy.providers.gemini`.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from typing import Any

import orjson

from services.proxy.providers.base import (
    ChatChunk,
    ChatResponse,
    ChunkChoice,
    ChunkDelta,
    CompletionUsage,
    FunctionCall,
    MessageToolCall,
    ResponseChoice,
    ResponseMessage,
    TokenDetails,
    ToolCallDelta,
)
from services.proxy.providers.openai_compat import retry_after_seconds
from shared.errors import (
    ApiError,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
)

JSON = dict[str, Any]

_RETRY_DELAY = re.compile(r"(\d+(?:\.\d+)?)s")


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
