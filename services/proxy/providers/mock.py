"""The built-in ``mock/<name>`` provider: deterministic, no I/O, no key.

It answers ``You said: <last user message>``, counts usage with the proxy's
estimator, streams the reply in word groups, honours ``n`` and
``max_tokens``/``max_completion_tokens`` (truncating with finish reason
``length``), and calls a tool when ``tool_choice`` is ``required`` or names a
function. It is the stack's zero-cost upstream — the embedded default answers
with it, and the benchmark measures the platform's own overhead against it — so
it does nothing that costs more than building the objects it returns.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncGenerator, Sequence

from services.proxy import estimate
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
    ToolCallDelta,
    UpstreamCall,
)
from services.proxy.providers.embed_wire import mock_embeddings
from shared.openai_chat import ChatCompletionRequest

WORDS_PER_CHUNK = 2
EMPTY_PROMPT_REPLY = "Hello! I am the Jetty mock model."


class _Plan:
    """What the mock will answer for one request (shared by both call styles)."""

    __slots__ = ("finish_reason", "text", "tool_name")

    def __init__(self, request: ChatCompletionRequest) -> None:
        self.tool_name = _forced_tool(request)
        self.text = ""
        if self.tool_name is not None:
            self.finish_reason = "tool_calls"
            return
        user = estimate.last_user_text(request)
        text = f"You said: {user}" if user else EMPTY_PROMPT_REPLY
        self.finish_reason = "stop"
        limit = request.max_completion_tokens or request.max_tokens
        if limit is not None and estimate.text_tokens(text) > limit:
            text = text[: limit * estimate.CHARS_PER_TOKEN]
            self.finish_reason = "length"
        self.text = text

    def completion_tokens(self) -> int:
        if self.tool_name is not None:
            return estimate.text_tokens(self.tool_name) + estimate.text_tokens(TOOL_ARGUMENTS)
        return estimate.text_tokens(self.text)


TOOL_ARGUMENTS = "{}"


def _forced_tool(request: ChatCompletionRequest) -> str | None:
    """The function the client forces the model to call, if any."""
    if not request.tools:
        return None
    choice = request.tool_choice
    if isinstance(choice, dict):
        function = choice.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return str(function["name"])
        return None
    if choice != "required":
        return None
    first = request.tools[0].get("function")
    if isinstance(first, dict) and isinstance(first.get("name"), str):
        return str(first["name"])
    return "tool"


def _usage(request: ChatCompletionRequest, plan: _Plan, n: int) -> CompletionUsage:
    prompt = estimate.prompt_tokens(request)
    completion = plan.completion_tokens() * n
    return CompletionUsage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


def _word_groups(text: str) -> list[str]:
    words = text.split(" ")
    return [
        (" " if i else "") + " ".join(words[i : i + WORDS_PER_CHUNK])
        for i in range(0, len(words), WORDS_PER_CHUNK)
    ]


class MockProvider(Provider):
    name = "mock"

    def __init__(self, models: Sequence[str] = ("echo",)) -> None:
        self._models = tuple(models)

    def models(self) -> Sequence[str]:
        return self._models

    async def embed(self, call: EmbedCall) -> Embeddings:
        """Deterministic unit vectors from a hash of each input (256 dimensions
        unless ``dimensions`` says otherwise)."""
        return mock_embeddings(call)

    async def complete(self, call: UpstreamCall) -> ChatResponse:
        request = call.request
        plan = _Plan(request)
        n = request.n or 1
        choices = []
        for index in range(n):
            if plan.tool_name is not None:
                message = ResponseMessage(
                    content=None,
                    tool_calls=[
                        MessageToolCall(
                            id=f"call_mock_{index}",
                            type="function",
                            function=FunctionCall(name=plan.tool_name, arguments=TOOL_ARGUMENTS),
                        )
                    ],
                )
            else:
                message = ResponseMessage(content=plan.text)
            choices.append(
                ResponseChoice(index=index, message=message, finish_reason=plan.finish_reason)
            )
        return ChatResponse(
            id=f"chatcmpl-mock-{os.urandom(12).hex()}",
            created=int(time.time()),
            model=request.model,
            choices=choices,
            usage=_usage(request, plan, n),
        )

    async def stream(self, call: UpstreamCall) -> AsyncGenerator[ChatChunk, None]:
        request = call.request
        plan = _Plan(request)
        n = request.n or 1
        ident = f"chatcmpl-mock-{os.urandom(12).hex()}"
        created = int(time.time())

        def chunk(index: int, delta: ChunkDelta, finish: str | None = None) -> ChatChunk:
            return ChatChunk(
                id=ident,
                created=created,
                model=request.model,
                choices=[ChunkChoice(index=index, delta=delta, finish_reason=finish)],
            )

        for index in range(n):
            if plan.tool_name is not None:
                yield chunk(
                    index,
                    ChunkDelta(
                        role="assistant",
                        content=None,
                        tool_calls=[
                            ToolCallDelta(
                                index=0,
                                id=f"call_mock_{index}",
                                type="function",
                                function=FunctionCall(name=plan.tool_name, arguments=""),
                            )
                        ],
                    ),
                )
                yield chunk(
                    index,
                    ChunkDelta(
                        tool_calls=[
                            ToolCallDelta(index=0, function=FunctionCall(arguments=TOOL_ARGUMENTS))
                        ]
                    ),
                )
            else:
                for i, group in enumerate(_word_groups(plan.text)):
                    delta = ChunkDelta(role="assistant", content=group) if i == 0 else None
                    yield chunk(index, delta or ChunkDelta(content=group))
            yield chunk(index, ChunkDelta(), plan.finish_reason)
        yield ChatChunk(
            id=ident,
            created=created,
            model=request.model,
            choices=[],
            usage=_usage(request, plan, n),
        )
