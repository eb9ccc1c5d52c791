"""The OpenAI chat-completions request as we accept it, plus the ``jetty`` block.

Validation is deliberately about shape, not policy: unknown top-level fields pass
through to the provider untouched (``extra="allow"``), while the fields we read
or that providers reject with an unhelpful error are checked here so the client
gets a 400 naming the parameter.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator

from shared.errors import InvalidRequest
from shared.limits import RunLimits

TASK_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$"
DEFAULT_TASK = "_chat"
DEFAULT_RUNBOOK_TASK = "_runbook"


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ImageUrl(_Open):
    url: str
    detail: str | None = None


class TextPart(_Open):
    type: Literal["text"]
    text: str


class ImagePart(_Open):
    type: Literal["image_url"]
    image_url: ImageUrl


class OtherPart(_Open):
    """``input_audio``, ``file``, ``refusal`` and future part types: kept as given."""

    type: str

    @field_validator("type")
    @classmethod
    def _not_a_known_type(cls, value: str) -> str:
        # A malformed text/image part must fail as itself, not slip through here.
        if value in {"text", "image_url"}:
            raise ValueError(f"malformed '{value}' content part")
        return value


ContentPart = Annotated[TextPart | ImagePart | OtherPart, Field(union_mode="left_to_right")]


class FunctionCall(_Open):
    name: str
    arguments: str


class MessageToolCall(_Open):
    id: str
    type: str = "function"
    function: FunctionCall


class Message(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: str | None = None


class StreamOptions(_Open):
    include_usage: StrictBool | None = None


class RunBudgetIn(BaseModel):
    """A runbook's own limits on its model calls (each defaults to the server's)."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_cost_usd: Annotated[float, Field(gt=0, le=1_000_000)] | None = None


class JettyBlock(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: Annotated[str, Field(pattern=TASK_PATTERN)] | None = None
    runbook: StrictBool = False
    collection: str | None = None
    agent: Literal["claude-code", "codex", "gemini-cli", "opencode"] | None = None
    file_paths: Annotated[list[str], Field(max_length=100)] | None = None
    # Runbook only: limits of this run (the server's defaults apply when absent).
    budget: RunBudgetIn | None = None
    timeout_s: Annotated[float, Field(gt=0, le=86_400)] | None = None
    # false: keep no messages and no output of this call (metadata only).
    store: StrictBool | None = None
    # Runbook only: the sandbox's limits (shared/limits.py), within the operator's.
    limits: RunLimits | None = None
    # Runbook only, from the hosted product's surface (docs/jetty-parity.md).
    files: Annotated[list[str], Field(max_length=100)] | None = None
    unzip: StrictBool = False
    template_variables: (
        Annotated[dict[str, str | int | float | bool], Field(max_length=200)] | None
    ) = None
    runbook_path: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    primary_outputs: Annotated[list[str], Field(max_length=100)] | None = None
    # Environment variables for this run only; never recorded (docs/jetty-parity.md).
    secret_params: Annotated[dict[str, str], Field(max_length=100)] | None = None
    # Checks after the agent and retry rounds (shared/events/runbook.py EvaluationSpec).
    evaluation: dict[str, Any] | None = None


class ChatCompletionRequest(_Open):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    messages: Annotated[list[Message], Field(min_length=1)]
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = None
    user: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    jetty: JettyBlock | None = None

    @property
    def task(self) -> str:
        if self.jetty is not None and self.jetty.task:
            return self.jetty.task
        return (
            DEFAULT_RUNBOOK_TASK if self.jetty is not None and self.jetty.runbook else DEFAULT_TASK
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


def _param_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in {"str", "int", "float", "bool"} or "[" in part or part[:1].isupper():
            # pydantic's union-branch labels are not part of the client's document
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def json_object_body(body: bytes, required: tuple[str, ...]) -> dict[str, Any]:
    """A request body as a JSON object holding ``required``; raises
    :class:`InvalidRequest` (invalid JSON, not an object, a missing parameter)."""
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request: {exc}", code="invalid_json"
        ) from None
    if not isinstance(raw, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    for name in required:
        if name not in raw:
            raise InvalidRequest(
                f"Missing required parameter: '{name}'.",
                param=name,
                code="missing_required_parameter",
            )
    return raw


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    """Parse and validate; raises :class:`InvalidRequest` naming the parameter."""
    raw = json_object_body(body, ("model", "messages"))
    try:
        return ChatCompletionRequest.model_validate(raw)
    except ValidationError as exc:
        # For unions pydantic reports one error per branch; the deepest is the
        # one that says what is actually wrong with the client's document.
        first = max(reversed(exc.errors(include_url=False)), key=lambda e: len(e["loc"]))
        param = _param_path(tuple(first["loc"]))
        if param == "messages" and first["type"] == "too_short":
            message = "'messages' must contain at least one message."
            code = "empty_array"
        else:
            message = f"Invalid value for '{param}': {first['msg']}."
            code = "invalid_value" if first["type"] != "missing" else "missing_required_parameter"
        raise InvalidRequest(message, param=param or None, code=code) from None
