"""What a call produced, gathered from a response or from stream deltas, in the
shape the completion events record.

Stream deltas are merged per choice index and, within a choice, tool calls per
tool-call index (the OpenAI stream sends a call's id and name once, then its
arguments in fragments). The same object serves finished, failed and cancelled
calls, so a partial stream is recorded exactly as far as it got.
"""

from __future__ import annotations

import time

from services.proxy import estimate
from services.proxy.providers.base import ChatChunk, ChatResponse, CompletionUsage
from shared.events.completion import ChoiceRecord, ResponseRecord, ToolCall, Usage
from shared.openai_chat import ChatCompletionRequest


class _ToolState:
    __slots__ = ("args", "id", "name", "type")

    def __init__(self) -> None:
        self.id: str | None = None
        self.type = "function"
        self.name: str | None = None
        self.args: list[str] = []

    def record(self) -> ToolCall:
        return ToolCall(id=self.id, type=self.type, name=self.name, arguments="".join(self.args))


class _ChoiceState:
    __slots__ = ("content", "finish_reason", "index", "refusal", "role", "tools")

    def __init__(self, index: int) -> None:
        self.index = index
        self.role = "assistant"
        self.content: list[str] = []
        self.refusal: list[str] = []
        self.tools: dict[int, _ToolState] = {}
        self.finish_reason: str | None = None

    def tool(self, index: int) -> _ToolState:
        state = self.tools.get(index)
        if state is None:
            state = self.tools[index] = _ToolState()
        return state

    def record(self, has_content: bool) -> ChoiceRecord:
        return ChoiceRecord(
            index=self.index,
            role=self.role,
            content="".join(self.content) if has_content else None,
            refusal="".join(self.refusal) if self.refusal else None,
            tool_calls=[self.tools[i].record() for i in sorted(self.tools)],
            finish_reason=self.finish_reason,
        )

    def generated_chars(self) -> int:
        total = sum(map(len, self.content)) + sum(map(len, self.refusal))
        for tool in self.tools.values():
            total += len(tool.name or "") + sum(map(len, tool.args))
        return total


class Accumulator:
    def __init__(self) -> None:
        self.upstream_id: str | None = None
        self.upstream_model: str | None = None
        self.created = 0
        self.usage: CompletionUsage | None = None
        # Wall-clock time of the first generated content (text, refusal or tool call).
        self.first_token_at: float | None = None
        self._choices: dict[int, _ChoiceState] = {}
        # A choice whose content stayed null (pure tool call) records null, not "".
        self._has_content: set[int] = set()

    @property
    def has_output(self) -> bool:
        return any(state.generated_chars() for state in self._choices.values())

    def _choice(self, index: int) -> _ChoiceState:
        state = self._choices.get(index)
        if state is None:
            state = self._choices[index] = _ChoiceState(index)
        return state

    def add_chunk(self, chunk: ChatChunk) -> None:
        if self.upstream_id is None and chunk.id:
            self.upstream_id = chunk.id
            self.upstream_model = chunk.model or None
            self.created = chunk.created
        if chunk.usage is not None:
            self.usage = chunk.usage
        for choice in chunk.choices:
            state = self._choice(choice.index)
            delta = choice.delta
            if delta.role:
                state.role = delta.role
            generated = False
            if delta.content is not None:
                self._has_content.add(choice.index)
                if delta.content:
                    state.content.append(delta.content)
                    generated = True
            if delta.refusal:
                state.refusal.append(delta.refusal)
                generated = True
            if delta.tool_calls:
                generated = True
                for call in delta.tool_calls:
                    tool = state.tool(call.index)
                    if call.id:
                        tool.id = call.id
                    if call.type:
                        tool.type = call.type
                    if call.function is not None:
                        if call.function.name:
                            tool.name = call.function.name
                        if call.function.arguments:
                            tool.args.append(call.function.arguments)
            if choice.finish_reason is not None:
                state.finish_reason = choice.finish_reason
            if generated and self.first_token_at is None:
                self.first_token_at = time.time()

    def add_response(self, response: ChatResponse) -> None:
        self.upstream_id = response.id or None
        self.upstream_model = response.model or None
        self.created = response.created
        self.usage = response.usage
        for choice in response.choices:
            state = self._choice(choice.index)
            message = choice.message
            state.role = message.role
            if message.content is not None:
                self._has_content.add(choice.index)
                state.content.append(message.content)
            if message.refusal:
                state.refusal.append(message.refusal)
            for i, call in enumerate(message.tool_calls or ()):
                tool = state.tool(i)
                tool.id = call.id or None
                tool.type = call.type
                tool.name = call.function.name
                tool.args.append(call.function.arguments or "")
            state.finish_reason = choice.finish_reason

    def response_record(self) -> ResponseRecord:
        choices = [self._choices[i].record(i in self._has_content) for i in sorted(self._choices)]
        first = choices[0] if choices else None
        return ResponseRecord(
            content=first.content if first else None,
            tool_calls=first.tool_calls if first else [],
            finish_reason=first.finish_reason if first else None,
            upstream_id=self.upstream_id,
            upstream_model=self.upstream_model,
            # Every choice is kept only when there are several (n > 1).
            choices=choices if len(choices) > 1 else [],
        )

    def estimated_usage(self, request: ChatCompletionRequest | None) -> CompletionUsage:
        """Usage from our own estimate (no upstream count exists)."""
        prompt = estimate.prompt_tokens(request) if request is not None else 0
        completion = sum(
            estimate.chars_tokens(state.generated_chars()) for state in self._choices.values()
        )
        return CompletionUsage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )

    def usage_chunk(self, usage: CompletionUsage, model: str) -> ChatChunk:
        """The final ``choices: []`` chunk carrying usage, in this stream's identity."""
        return ChatChunk(
            id=self.upstream_id or "",
            created=self.created,
            model=self.upstream_model or model,
            choices=[],
            usage=usage,
        )


def usage_record(usage: CompletionUsage, *, estimated: bool = False) -> Usage:
    details: dict[str, int] = {}
    if usage.prompt_tokens_details is not None:
        for key, value in usage.prompt_tokens_details.counts().items():
            details[f"prompt.{key}"] = value
    if usage.completion_tokens_details is not None:
        for key, value in usage.completion_tokens_details.counts().items():
            details[f"completion.{key}"] = value
    return Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens or usage.prompt_tokens + usage.completion_tokens,
        details=details,
        estimated=estimated,
    )
