"""Events of one model call (a *completion step*) inside a trajectory.

A passthrough trajectory is exactly one step: one of ``completion.finished`` /
``completion.failed`` / ``completion.cancelled``, preceded by ``completion.requested``
when the call outlasts the proxy's requested delay. A call that ends sooner sends
only its end event, which then carries the request side itself (``request``,
``stream``, ``ingress``). The projection must give the same rows whatever order
these arrive in.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Mode = Literal["passthrough", "runbook"]
# What kind of model call a step is: a chat completion, or an embeddings call
# (``POST /v1/embeddings``: no output text, ``response.embeddings`` says how many
# vectors of what dimension came back, never the vectors).
StepKind = Literal["completion", "embedding"]


def _is_completion(value: object) -> bool:
    return isinstance(value, str) and value == "completion"


def step_kind() -> Any:
    """The ``kind`` field: left out of the JSON for chat steps, so their events stay
    byte for byte what they were before embeddings existed."""
    return Field(default="completion", exclude_if=_is_completion)


# A cost as the events carry it: plain decimal notation, at most 10 decimal places
# (the pricing quantum, 1e-10 USD) and 12 integer digits, so the projection's
# NUMERIC(30, 10) columns hold every valid value exactly.
COST_PATTERN = r"^[0-9]{1,12}(\.[0-9]{1,10})?$"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Usage(_Frozen):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    # Provider-specific details (cached/reasoning tokens...) kept as given.
    details: dict[str, int] = Field(default_factory=dict)
    estimated: bool = False


class ToolCall(_Frozen):
    id: str | None = None
    type: str = "function"
    name: str | None = None
    arguments: str = ""


class ChoiceRecord(_Frozen):
    index: int = 0
    role: str = "assistant"
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    finish_reason: str | None = None


class EmbeddingsRecord(_Frozen):
    """What an embeddings call returned, without the vectors."""

    count: int
    dimensions: int
    encoding_format: str = "float"


def _is_none(value: Any) -> bool:
    return value is None


class ResponseRecord(_Frozen):
    """What the model produced; ``choices`` holds all of them when ``n`` > 1."""

    content: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    finish_reason: str | None = None
    upstream_id: str | None = None
    upstream_model: str | None = None
    choices: list[ChoiceRecord] = Field(default_factory=list)
    # Only on embedding steps (left out of the JSON otherwise).
    embeddings: EmbeddingsRecord | None = Field(default=None, exclude_if=_is_none)


class AttemptRecord(_Frozen):
    """One try of one upstream target (retries and fallbacks make several a step)."""

    provider: str
    model: str
    #: the upstream's HTTP answer as mapped for the client (200 when it succeeded);
    #: ``None`` when no answer came (connection error, timeout)
    status: int | None = None
    #: the error's code (``rate_limit_exceeded``, ``upstream_unreachable``…); ``None`` on success
    error: str | None = None
    latency_ms: float = 0.0
    #: seconds the upstream asked us to wait (``Retry-After``), when it did
    retry_after: float | None = None


class ErrorRecord(_Frozen):
    status: int
    type: str
    message: str
    code: str | None = None
    param: str | None = None


class CompletionRequested(_Frozen):
    """The gateway accepted a call and a proxy took it."""

    task: str
    mode: Mode = "passthrough"
    step_index: int = 0
    kind: StepKind = step_kind()
    model: str
    provider: str
    stream: bool
    ingress: str = "chat.completions"
    # The request as recorded: messages with large base64 redacted, plus parameters.
    request: dict[str, Any]
    received_at: datetime


class _CompletionEnded(_Frozen):
    task: str
    mode: Mode = "passthrough"
    step_index: int = 0
    kind: StepKind = step_kind()
    model: str
    provider: str
    response: ResponseRecord
    usage: Usage | None = None
    latency_ms: float
    ttft_ms: float | None = None
    received_at: datetime
    ended_at: datetime
    # The request side, as in ``completion.requested``; set only when no requested
    # event was published for this step (a call that ended before the proxy's delay).
    request: dict[str, Any] | None = None
    stream: bool | None = None
    ingress: str | None = None
    # What the call cost in US dollars, as an exact decimal string (JSON has no
    # decimal type and a float would not be exact): ``"0.0004350000"``. Null when
    # the price is unknown (an unlisted model, the mock provider) or there is no
    # usage; never 0 for "don't know". An estimate when ``usage.estimated`` is.
    cost_usd: str | None = Field(default=None, pattern=COST_PATTERN)
    # Every upstream try in order (retries, then fallbacks); the last one served the
    # answer or gave the error. Empty when no upstream was tried (an unroutable model).
    attempts: list[AttemptRecord] = Field(default_factory=list)
    # The id of the API key that made the call (never its secret); its spend is
    # the sum of the cost of its calls.
    key_id: str | None = None


class CompletionFinished(_CompletionEnded):
    pass


class CompletionFailed(_CompletionEnded):
    error: ErrorRecord


class CompletionCancelled(_CompletionEnded):
    reason: str = "client_disconnected"
