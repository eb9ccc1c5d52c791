"""The provider port: what every upstream adapter implements.

The OpenAI chat-completions shape is the proxy's lingua franca. A provider
translates one call into its upstream's wire format and the answer back:

* :meth:`Provider.complete` returns one :class:`ChatResponse` (``chat.completion``);
* :meth:`Provider.stream` yields :class:`ChatChunk` objects (``chat.completion.chunk``)
  and, when the upstream reports usage, ends with a usage-only chunk
  (``choices: []``) exactly as OpenAI does with ``stream_options.include_usage``.

Everything else — routing, accumulation, events, reply frames, keep-alives,
timeouts over the whole call and cancellation — is done once by the worker, so a
native adapter (Anthropic Messages, Gemini, Cohere, Azure…) is only translation
plus its own HTTP details.

Contract every provider keeps:

* failures the client should see are raised as :class:`shared.errors.ApiError`
  subclasses, already mapped (429 keeps ``retry_after``, 5xx → 502, our own key
  rejected → 502, timeouts → 504); anything else escaping is a bug and becomes a 500;
* :class:`asyncio.CancelledError` is never swallowed, and leaving :meth:`stream`
  early (cancellation, ``aclose()``) closes the upstream HTTP request;
* provider keys never appear in an exception message, a log line or a chunk.

The OpenAI objects below are pydantic models with ``extra="allow"`` so fields we
do not read (``system_fingerprint``, ``logprobs``, ``service_tier``…) survive the
round trip. Fields the OpenAI schema requires are always serialised (``null`` if
need be: ``finish_reason`` on every chunk choice, ``content`` and ``refusal`` on a
response message…); optional ones are left out when ``None`` (:func:`omit_none`), so
a delta stays ``{"content": "hi"}``. That rule is applied by pydantic-core while
serialising, which measured cheaper than ``exclude_unset`` bookkeeping.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.errors import InvalidRequest
from shared.openai_chat import ChatCompletionRequest
from shared.openai_embeddings import EmbeddingRequest


def _is_none(value: Any) -> bool:
    return value is None


def omit_none() -> Any:
    """An optional field, left out of the JSON when ``None``."""
    return Field(default=None, exclude_if=_is_none)


class OpenAIObject(BaseModel):
    model_config = ConfigDict(extra="allow")


class FunctionCall(OpenAIObject):
    name: str | None = omit_none()
    arguments: str | None = omit_none()


class ToolCallDelta(OpenAIObject):
    index: int = 0
    id: str | None = omit_none()
    type: str | None = omit_none()
    function: FunctionCall | None = omit_none()


class ChunkDelta(OpenAIObject):
    role: str | None = omit_none()
    content: str | None = omit_none()
    refusal: str | None = omit_none()
    tool_calls: list[ToolCallDelta] | None = omit_none()


class ChunkChoice(OpenAIObject):
    index: int = 0
    delta: ChunkDelta = Field(default_factory=ChunkDelta)
    finish_reason: str | None = None


class TokenDetails(OpenAIObject):
    """``prompt_tokens_details`` / ``completion_tokens_details``: all fields extra."""

    def counts(self) -> dict[str, int]:
        extra = self.model_extra or {}
        return {k: v for k, v in extra.items() if isinstance(v, int) and not isinstance(v, bool)}


class CompletionUsage(OpenAIObject):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: TokenDetails | None = omit_none()
    completion_tokens_details: TokenDetails | None = omit_none()


class ChatChunk(OpenAIObject):
    id: str = ""
    object: str = "chat.completion.chunk"
    created: int = 0
    model: str = ""
    choices: list[ChunkChoice] = Field(default_factory=list)
    usage: CompletionUsage | None = omit_none()


class MessageToolCall(OpenAIObject):
    id: str = ""
    type: str = "function"
    function: FunctionCall = Field(default_factory=FunctionCall)


class ResponseMessage(OpenAIObject):
    role: str = "assistant"
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[MessageToolCall] | None = omit_none()


class ResponseChoice(OpenAIObject):
    index: int = 0
    message: ResponseMessage = Field(default_factory=ResponseMessage)
    finish_reason: str | None = None
    logprobs: OpenAIObject | None = None


class ChatResponse(OpenAIObject):
    id: str = ""
    object: str = "chat.completion"
    created: int = 0
    model: str = ""
    choices: list[ResponseChoice] = Field(default_factory=list)
    usage: CompletionUsage | None = omit_none()


def to_json(obj: OpenAIObject, exclude: set[str] | None = None) -> bytes:
    """Serialise for the wire, straight to bytes (no intermediate ``str``)."""
    return obj.__pydantic_serializer__.to_json(obj, exclude=exclude)


class ModelCard(OpenAIObject):
    """One entry of ``GET /v1/models``."""

    id: str
    object: str = "model"
    created: int = 0
    owned_by: str


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """One call as a provider sees it.

    ``request`` is the validated client request (native adapters translate from it);
    ``body`` is the client's JSON verbatim, for OpenAI-compatible adapters that
    forward it with minimal edits so unknown fields reach the upstream untouched.
    ``model`` is the provider's own name for the model (``openai/gpt-4o`` → ``gpt-4o``).
    """

    model: str
    request: ChatCompletionRequest
    body: bytes


@dataclass(frozen=True, slots=True)
class EmbedCall:
    """One embeddings call as a provider sees it: ``model`` is the provider's name."""

    model: str
    request: EmbeddingRequest


@dataclass(frozen=True, slots=True)
class Embeddings:
    """The vectors, in input order, and the input tokens the upstream counted
    (``None`` when it did not say: the proxy then estimates)."""

    vectors: list[list[float]]
    prompt_tokens: int | None = None
    model: str | None = None


def texts_only(provider: str, call: EmbedCall) -> list[str]:
    """The inputs as strings; token-id inputs only reach OpenAI-compatible upstreams."""
    texts = call.request.texts()
    if texts is None:
        raise InvalidRequest(
            f"The provider '{provider}' takes text inputs only, not token ids.",
            param="input",
            code="invalid_value",
        )
    return texts


class Provider(abc.ABC):
    """An upstream the router can send calls to. One instance per configured upstream,
    shared by all calls (it owns the connection pool)."""

    #: routing name, the ``<provider>/`` prefix of a model id and the ``provider`` of events
    name: str

    @abc.abstractmethod
    async def complete(self, call: UpstreamCall) -> ChatResponse:
        """One non-streaming completion."""

    @abc.abstractmethod
    def stream(self, call: UpstreamCall) -> AsyncGenerator[ChatChunk, None]:
        """Streamed completion chunks; ends with a usage-only chunk when usage is known."""

    @abc.abstractmethod
    def models(self) -> Sequence[str]:
        """Upstream model names to list in ``GET /v1/models`` (without the prefix)."""

    async def embed(self, call: EmbedCall) -> Embeddings:
        """Vectors for ``call``'s inputs; providers without embeddings refuse."""
        raise InvalidRequest(
            f"The provider '{self.name}' does not offer embeddings through this gateway.",
            param="model",
            code="model_not_supported",
        )

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open pools; called once before the first call."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Close pools; called once at shutdown after in-flight calls ended."""
