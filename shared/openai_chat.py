"""The OpenAI chat-completions request as we accept it, plus the ``jetty`` block.

Validation is deliberately about shape, not policy: unknown top-level fields pass
through to the provider untouched (``extra="allow"``), while the fields we read
or that providers reject with an unhelpful error are checked here so the client
gets a 400 naming the parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
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
        return task_of(self.jetty)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


def task_of(jetty: JettyBlock | None) -> str:
    """The task a call is recorded under: ``jetty.task``, else the default."""
    if jetty is not None and jetty.task:
        return jetty.task
    return DEFAULT_RUNBOOK_TASK if jetty is not None and jetty.runbook else DEFAULT_TASK


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
    return _validated(json_object_body(body, ("model", "messages")))


def _validated(raw: dict[str, Any]) -> ChatCompletionRequest:
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


@dataclass(frozen=True, slots=True)
class ChatHead:
    """What the gateway reads of a chat request it has validated: enough to open
    the call. The proxy parses the whole :class:`ChatCompletionRequest`."""

    model: str
    stream: bool
    include_usage: bool
    jetty: JettyBlock | None

    @property
    def task(self) -> str:
        return task_of(self.jetty)

    @classmethod
    def of(cls, req: ChatCompletionRequest) -> ChatHead:
        return cls(req.model, bool(req.stream), req.include_usage, req.jetty)


def check_chat_request(body: bytes) -> ChatHead:
    """Validate exactly as :func:`parse_chat_request` does (same errors), without
    building the models for the common document: plain checks that accept a
    subset of what the model accepts; anything else goes through the model."""
    raw = json_object_body(body, ("model", "messages"))
    head = _plain_head(raw)
    return head if head is not None else ChatHead.of(_validated(raw))


# --- the plain checks: True only when the model would accept the value -----------------


def _opt_str(v: object) -> bool:
    return v is None or type(v) is str


def _opt_int(v: object, lo: int, hi: int | None = None) -> bool:
    return v is None or (type(v) is int and v >= lo and (hi is None or v <= hi))


def _opt_num(v: object, lo: float, hi: float) -> bool:
    return v is None or ((type(v) is float or type(v) is int) and lo <= v <= hi)


def _opt_dict(v: object) -> bool:
    return v is None or type(v) is dict


def _stop(v: object) -> bool:
    return (
        v is None
        or type(v) is str
        or (type(v) is list and len(v) <= 4 and all(type(x) is str for x in v))
    )


def _stream_options(v: object) -> bool:
    if v is None:
        return True
    flag = v.get("include_usage") if type(v) is dict else 0
    return flag is None or flag is True or flag is False


_FIELD_CHECKS: dict[str, Any] = {
    "stream": lambda v: v is None or v is True or v is False,
    "stream_options": _stream_options,
    "temperature": lambda v: _opt_num(v, 0, 2),
    "top_p": lambda v: _opt_num(v, 0, 1),
    "max_tokens": lambda v: _opt_int(v, 1),
    "max_completion_tokens": lambda v: _opt_int(v, 1),
    "n": lambda v: _opt_int(v, 1, 128),
    "stop": _stop,
    "seed": lambda v: _opt_int(v, -(2**63), 2**63 - 1),
    "user": _opt_str,
    "tools": lambda v: v is None or (type(v) is list and all(type(x) is dict for x in v)),
    "tool_choice": lambda v: v is None or type(v) is str or type(v) is dict,
    "response_format": _opt_dict,
    "presence_penalty": lambda v: _opt_num(v, -2, 2),
    "frequency_penalty": lambda v: _opt_num(v, -2, 2),
}
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def _part(p: object) -> bool:
    if type(p) is not dict:
        return False
    kind = p.get("type")
    if kind == "text":
        return type(p.get("text")) is str
    if kind == "image_url":
        image = p.get("image_url")
        return (
            type(image) is dict and type(image.get("url")) is str and _opt_str(image.get("detail"))
        )
    return type(kind) is str


def _tool_call(c: object) -> bool:
    if type(c) is not dict or type(c.get("id")) is not str:
        return False
    if "type" in c and type(c["type"]) is not str:
        return False
    fn = c.get("function")
    return type(fn) is dict and type(fn.get("name")) is str and type(fn.get("arguments")) is str


def _message(m: object) -> bool:
    if type(m) is not dict or type(m.get("role")) is not str or m["role"] not in _ROLES:
        return False
    content = m.get("content")
    if not (content is None or type(content) is str) and (
        type(content) is not list or not all(_part(p) for p in content)
    ):
        return False
    calls = m.get("tool_calls")
    if calls is not None and (type(calls) is not list or not all(_tool_call(c) for c in calls)):
        return False
    return _opt_str(m.get("name")) and _opt_str(m.get("tool_call_id"))


def _plain_head(raw: dict[str, Any]) -> ChatHead | None:
    model, messages = raw["model"], raw["messages"]
    if type(model) is not str or not 1 <= len(model) <= 256:
        return None
    if type(messages) is not list or not messages or not all(_message(m) for m in messages):
        return None
    if len(raw) > 2:
        for name, value in raw.items():
            check = _FIELD_CHECKS.get(name)
            if check is not None and not check(value):
                return None
    jetty = raw.get("jetty")
    block: JettyBlock | None = None
    if jetty is not None:
        try:
            block = JettyBlock.model_validate(jetty)
        except ValidationError:
            return None  # the model names the parameter
    stream = raw.get("stream") is True
    options = raw.get("stream_options")
    include_usage = stream and options is not None and options.get("include_usage") is True
    return ChatHead(model, stream, include_usage, block)
