"""OpenAI Responses request → OpenAI chat request, as pure functions.

:func:`parse_request` validates a ``POST /v1/responses`` body and :func:`to_chat`
turns it into the chat request the proxy reads. The way back (Response objects
and the event stream) is in :mod:`services.gateway.ingress.responses`, whose
docstring lists the mapping decisions that lose something.

Errors are :class:`shared.errors.InvalidRequest` naming the parameter the way the
client wrote it (``input[3].call_id``), before any call is opened.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from shared.errors import InvalidRequest

JSON = dict[str, Any]

# Reasoning blocks of an Anthropic answer (signed thinking, redacted thinking)
# travel through the client inside a reasoning item's ``encrypted_content`` under
# this prefix, so the next request can hand them back to the model.
THINKING_PREFIX = "jetty.thinking.v1:"
ENCRYPTED_REASONING = "reasoning.encrypted_content"

# Item types the client can only have got from OpenAI's hosted tools (or that
# only OpenAI's servers can interpret): nothing to translate, so not sent.
DROPPED_ITEM_TYPES = frozenset(
    {
        "web_search_call",
        "file_search_call",
        "computer_call",
        "computer_call_output",
        "image_generation_call",
        "code_interpreter_call",
        "local_shell_call",
        "local_shell_call_output",
        "shell_call",
        "shell_call_output",
        "apply_patch_call",
        "apply_patch_call_output",
        "mcp_list_tools",
        "mcp_approval_request",
        "mcp_approval_response",
        "mcp_call",
        "custom_tool_call",
        "custom_tool_call_output",
        "tool_search_call",
        "tool_search_output",
        "compaction",
    }
)

M = TypeVar("M", bound=BaseModel)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextParam(_Open):
    format: JSON | None = None
    verbosity: str | None = None


class ReasoningParam(_Open):
    effort: str | None = None
    summary: str | None = None


class ResponsesRequest(_Open):
    """The top level of ``POST /v1/responses``; items, parts and tools are checked
    one by one in :func:`to_chat` so errors can name them."""

    model: Annotated[str, Field(min_length=1, max_length=256)]
    input: str | list[JSON]
    instructions: str | None = None
    tools: list[JSON] | None = None
    tool_choice: str | JSON | None = None
    parallel_tool_calls: StrictBool | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    text: TextParam | None = None
    reasoning: ReasoningParam | None = None
    store: StrictBool | None = None
    include: list[str] | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    user: str | None = None
    service_tier: str | None = None
    metadata: dict[str, str] | None = None
    stream: StrictBool | None = None
    background: StrictBool | None = None
    previous_response_id: str | None = None
    conversation: str | JSON | None = None
    prompt: JSON | None = None


class FunctionTool(_Open):
    type: Literal["function"]
    name: Annotated[str, Field(min_length=1)]
    description: str | None = None
    parameters: JSON | None = None
    strict: bool | None = None


class MessageItem(_Open):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[JSON]


class FunctionCallItem(_Open):
    type: Literal["function_call"]
    call_id: Annotated[str, Field(min_length=1)]
    name: Annotated[str, Field(min_length=1)]
    arguments: str


class FunctionCallOutputItem(_Open):
    type: Literal["function_call_output"]
    call_id: Annotated[str, Field(min_length=1)]
    output: str | list[JSON]


class ReasoningItem(_Open):
    type: Literal["reasoning"]
    summary: list[JSON] = Field(default_factory=list)
    content: list[JSON] | None = None
    encrypted_content: str | None = None


class TextPart(_Open):
    type: Literal["input_text", "output_text"]
    text: str


class RefusalPart(_Open):
    type: Literal["refusal"]
    refusal: str


class ImagePart(_Open):
    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    detail: str | None = None


class FilePart(_Open):
    type: Literal["input_file"]
    file_data: str | None = None
    file_id: str | None = None
    file_url: str | None = None
    filename: str | None = None


def _path(prefix: str, loc: tuple[int | str, ...]) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in {"str", "int", "float", "bool"} or "[" in part or part[:1].isupper():
            continue  # pydantic's union-branch labels are not part of the client's document
        else:
            out += ("." if out else "") + part
    return out


def _validate(model: type[M], raw: Any, param: str) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        # For unions pydantic reports one error per branch; the deepest says what
        # is actually wrong with the client's document.
        first = max(reversed(exc.errors(include_url=False)), key=lambda e: len(e["loc"]))
        where = _path(param, tuple(first["loc"])) or param
        if first["type"] == "missing":
            raise InvalidRequest(
                f"Missing required parameter: '{where}'.",
                param=where,
                code="missing_required_parameter",
            ) from None
        raise InvalidRequest(
            f"Invalid value for '{where}': {first['msg']}.", param=where, code="invalid_value"
        ) from None


def _unsupported(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="unsupported_parameter")


def parse_request(body: bytes) -> ResponsesRequest:
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request: {exc}", code="invalid_json"
        ) from None
    if not isinstance(raw, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    req = _validate(ResponsesRequest, raw, "")
    if req.previous_response_id is not None:
        raise _unsupported(
            "previous_response_id is not supported: this server keeps no responses. "
            "Send the whole conversation in 'input' (and 'store': false).",
            "previous_response_id",
        )
    if req.conversation is not None:
        raise _unsupported(
            "Conversations are not supported: this server keeps no state. "
            "Send the whole conversation in 'input'.",
            "conversation",
        )
    if req.background:
        raise _unsupported("Background responses are not supported.", "background")
    if req.prompt is not None:
        raise _unsupported("Stored prompt templates are not supported.", "prompt")
    return req


# --- request: Responses → chat ---------------------------------------------------------


def _image(part: ImagePart, param: str) -> JSON:
    if not part.image_url:
        raise _unsupported(
            "Images are taken as URLs or base64 data URLs in 'image_url'; file ids "
            "cannot be resolved by this server.",
            f"{param}.file_id" if part.file_id else f"{param}.image_url",
        )
    image: JSON = {"url": part.image_url}
    if part.detail and part.detail != "auto":
        image["detail"] = part.detail
    return {"type": "image_url", "image_url": image}


def _file(part: FilePart, param: str) -> JSON:
    if not part.file_data:
        raise _unsupported(
            "Files are taken as base64 data in 'file_data'; file ids and URLs cannot be "
            "resolved by this server.",
            f"{param}.file_data",
        )
    file: JSON = {"file_data": part.file_data}
    if part.filename:
        file["filename"] = part.filename
    return {"type": "file", "file": file}


def _content_part(raw: JSON, param: str) -> JSON:
    kind = raw.get("type")
    if kind in ("input_text", "output_text"):
        return {"type": "text", "text": _validate(TextPart, raw, param).text}
    if kind == "refusal":
        return {"type": "text", "text": _validate(RefusalPart, raw, param).refusal}
    if kind == "input_image":
        return _image(_validate(ImagePart, raw, param), param)
    if kind == "input_file":
        return _file(_validate(FilePart, raw, param), param)
    raise InvalidRequest(
        f"Invalid value for '{param}.type': {kind!r} is not a supported content part "
        "(input_text, output_text, refusal, input_image, input_file).",
        param=f"{param}.type",
        code="invalid_value",
    )


def _user_content(content: str | list[JSON], param: str) -> str | list[JSON]:
    if isinstance(content, str):
        return content
    parts = [_content_part(p, f"{param}[{i}]") for i, p in enumerate(content)]
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts) if len(parts) == 1 else parts
    return parts


def _assistant_text(content: str | list[JSON], param: str) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for i, raw in enumerate(content):
        part = _content_part(raw, f"{param}[{i}]")
        if part["type"] != "text":
            raise InvalidRequest(
                "Assistant messages carry text only.", param=f"{param}[{i}]", code="invalid_value"
            )
        texts.append(part["text"])
    return "".join(texts)


def encode_thinking(blocks: list[Any]) -> str:
    return THINKING_PREFIX + base64.urlsafe_b64encode(orjson.dumps(blocks)).decode()


def decode_thinking(encrypted: str | None) -> list[Any]:
    """Our own thinking blocks back from ``encrypted_content``; anything else (an
    OpenAI-encrypted blob) means nothing to the providers behind us."""
    if not encrypted or not encrypted.startswith(THINKING_PREFIX):
        return []
    try:
        blocks = orjson.loads(base64.urlsafe_b64decode(encrypted[len(THINKING_PREFIX) :]))
    except (binascii.Error, ValueError):
        return []
    return blocks if isinstance(blocks, list) else []


@dataclass
class _Conversation:
    """Chat messages being built from the input items, in order."""

    messages: list[JSON] = field(default_factory=list)
    call_ids: set[str] = field(default_factory=set)
    # Reasoning blocks waiting for the assistant turn they belong to.
    thinking: list[Any] = field(default_factory=list)
    # Images and files from tool outputs: chat tool messages carry text only, so
    # they follow the run of tool messages as one user message.
    media: list[JSON] = field(default_factory=list)

    def flush_media(self) -> None:
        if self.media:
            self.messages.append({"role": "user", "content": self.media})
            self.media = []

    def assistant(self, *, new: bool) -> JSON:
        self.flush_media()
        last = self.messages[-1] if self.messages else None
        if new or last is None or last["role"] != "assistant":
            last = {"role": "assistant", "content": None}
            self.messages.append(last)
        if self.thinking:
            last.setdefault("thinking_blocks", []).extend(self.thinking)
            self.thinking = []
        return last

    def message(self, item: MessageItem, param: str) -> None:
        if item.role == "assistant":
            turn = self.assistant(new=True)
            turn["content"] = _assistant_text(item.content, f"{param}.content")
            return
        self.flush_media()
        # ``developer`` is OpenAI's newer name for ``system``; the older one is what
        # every provider behind us understands.
        role = "user" if item.role == "user" else "system"
        self.messages.append(
            {"role": role, "content": _user_content(item.content, f"{param}.content")}
        )

    def function_call(self, item: FunctionCallItem) -> None:
        turn = self.assistant(new=False)
        turn.setdefault("tool_calls", []).append(
            {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
        )
        self.call_ids.add(item.call_id)

    def function_output(self, item: FunctionCallOutputItem, param: str) -> None:
        if item.call_id not in self.call_ids:
            raise InvalidRequest(
                f"No function call found for function call output with call_id "
                f"'{item.call_id}' (this server keeps no state: the function_call item "
                "must come earlier in 'input').",
                param=f"{param}.call_id",
                code="invalid_value",
            )
        if isinstance(item.output, str):
            text = item.output
        else:
            texts = []
            for i, raw in enumerate(item.output):
                part = _content_part(raw, f"{param}.output[{i}]")
                if part["type"] == "text":
                    texts.append(part["text"])
                else:
                    self.media.append(part)
            text = "".join(texts)
        self.messages.append({"role": "tool", "tool_call_id": item.call_id, "content": text})

    def reasoning(self, item: ReasoningItem) -> None:
        self.thinking.extend(decode_thinking(item.encrypted_content))


def _messages(req: ResponsesRequest) -> list[JSON]:
    conv = _Conversation()
    if req.instructions:
        conv.messages.append({"role": "system", "content": req.instructions})
    items: list[JSON] = (
        [{"type": "message", "role": "user", "content": req.input}]
        if isinstance(req.input, str)
        else req.input
    )
    for index, raw in enumerate(items):
        param = f"input[{index}]"
        kind = raw.get("type", "message" if "role" in raw else None)
        if kind == "message":
            conv.message(_validate(MessageItem, raw, param), param)
        elif kind == "function_call":
            conv.function_call(_validate(FunctionCallItem, raw, param))
        elif kind == "function_call_output":
            conv.function_output(_validate(FunctionCallOutputItem, raw, param), param)
        elif kind == "reasoning":
            conv.reasoning(_validate(ReasoningItem, raw, param))
        elif kind == "item_reference":
            raise _unsupported(
                "Item references are not supported: this server keeps no items. "
                "Send the item itself.",
                param,
            )
        elif kind not in DROPPED_ITEM_TYPES:
            raise InvalidRequest(
                f"Invalid value for '{param}.type': {kind!r} is not a supported input item.",
                param=f"{param}.type",
                code="invalid_value",
            )
    conv.flush_media()
    if not conv.messages:
        raise InvalidRequest(
            "'input' must contain at least one item.", param="input", code="empty_array"
        )
    return conv.messages


def _tools(req: ResponsesRequest) -> list[JSON]:
    tools = []
    for index, raw in enumerate(req.tools or ()):
        if raw.get("type") != "function":
            continue  # hosted tools (web_search, file_search…) and namespaces: not offered
        tool = _validate(FunctionTool, raw, f"tools[{index}]")
        function: JSON = {"name": tool.name}
        if tool.description is not None:
            function["description"] = tool.description
        function["parameters"] = tool.parameters or {"type": "object", "properties": {}}
        if tool.strict is not None:
            function["strict"] = tool.strict
        tools.append({"type": "function", "function": function})
    return tools


def _tool_choice(choice: str | JSON) -> str | JSON:
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise InvalidRequest(
                f"Invalid value for 'tool_choice': {choice!r}.",
                param="tool_choice",
                code="invalid_value",
            )
        return choice
    kind = choice.get("type")
    if kind == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    if kind == "allowed_tools" and isinstance(choice.get("tools"), list):
        names = [t.get("name") for t in choice["tools"] if isinstance(t, dict)]
        return {
            "type": "allowed_tools",
            "allowed_tools": {
                "mode": choice.get("mode", "auto"),
                "tools": [
                    {"type": "function", "function": {"name": n}}
                    for n in names
                    if isinstance(n, str)
                ],
            },
        }
    raise _unsupported(
        f"tool_choice of type {kind!r} is not supported: only function tools are offered.",
        "tool_choice",
    )


def _response_format(fmt: JSON) -> JSON | None:
    kind = fmt.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise InvalidRequest(
                "Missing required parameter: 'text.format.schema'.",
                param="text.format.schema",
                code="missing_required_parameter",
            )
        spec = {k: fmt[k] for k in ("name", "description", "schema", "strict") if k in fmt}
        spec.setdefault("name", "response")
        return {"type": "json_schema", "json_schema": spec}
    raise InvalidRequest(
        f"Invalid value for 'text.format.type': {kind!r}.",
        param="text.format.type",
        code="invalid_value",
    )


def to_chat(req: ResponsesRequest) -> JSON:
    """The OpenAI chat request for ``req`` (only fields chat completions knows)."""
    chat: JSON = {"model": req.model, "messages": _messages(req)}
    tools = _tools(req)
    choice = _tool_choice(req.tool_choice) if req.tool_choice is not None else None
    if tools:
        chat["tools"] = tools
        if choice is not None:
            chat["tool_choice"] = choice
        if req.parallel_tool_calls is not None:
            chat["parallel_tool_calls"] = req.parallel_tool_calls
    elif req.tool_choice == "required":
        raise InvalidRequest(
            "tool_choice 'required' needs at least one function tool.",
            param="tool_choice",
            code="invalid_value",
        )
    if req.max_output_tokens is not None:
        chat["max_completion_tokens"] = req.max_output_tokens
    for name in ("temperature", "top_p", "prompt_cache_key", "safety_identifier", "user"):
        value = getattr(req, name)
        if value is not None:
            chat[name] = value
    if req.service_tier is not None and req.service_tier != "auto":
        chat["service_tier"] = req.service_tier
    if req.text is not None:
        if req.text.format is not None:
            fmt = _response_format(req.text.format)
            if fmt is not None:
                chat["response_format"] = fmt
        if req.text.verbosity is not None:
            chat["verbosity"] = req.text.verbosity
    if req.reasoning is not None and req.reasoning.effort is not None:
        chat["reasoning_effort"] = req.reasoning.effort
    if req.stream:
        chat["stream"] = True
        # Usage always: the Response object carries it, and so does the trajectory.
        chat["stream_options"] = {"include_usage": True}
    return chat
