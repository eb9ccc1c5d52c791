"""Gemini ``GenerateContentRequest`` → OpenAI chat request, as pure functions.

:func:`parse_request` validates the body of ``models/{model}:generateContent`` (or
``:streamGenerateContent``; the body is the same) and :func:`to_chat` turns it into
the chat request the proxy reads. Field names are accepted in camelCase, as the
Google SDKs send them, and in snake_case, as Google's proto-JSON parser also takes
them (and as many REST examples write them). The way back — GenerateContentResponse
documents, streams, errors — is in :mod:`services.gateway.ingress.gemini`, whose
docstring lists the mapping decisions that lose something.

Errors are :class:`shared.errors.InvalidRequest` naming the field as the client
wrote it (``contents[2].parts[0].functionResponse``), before any call is opened.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError
from pydantic.alias_generators import to_camel

from shared.errors import InvalidRequest

JSON = dict[str, Any]
M = TypeVar("M", bound=BaseModel)

# The dummy signature Google documents for histories without real ones.
SKIP_SIGNATURE = "skip_thought_signature_validator"

# inlineData audio types the chat ``input_audio`` part can carry.
AUDIO_FORMATS = {"audio/wav": "wav", "audio/x-wav": "wav", "audio/mp3": "mp3", "audio/mpeg": "mp3"}

# thinkingBudget → reasoning_effort, inverting the proxy's table for Gemini 2.5
# (0 / 1024 / 8192 / 24576): the smallest effort whose budget covers the request.
_EFFORT_BUDGETS = ((0, "none"), (1024, "low"), (8192, "medium"))


class _G(BaseModel):
    model_config = ConfigDict(
        extra="allow", alias_generator=to_camel, validate_by_name=True, validate_by_alias=True
    )


class Blob(_G):
    mime_type: Annotated[str, Field(min_length=1)]
    data: str


class FileData(_G):
    mime_type: str | None = None
    file_uri: Annotated[str, Field(min_length=1)]


class FunctionCall(_G):
    id: str | None = None
    name: Annotated[str, Field(min_length=1)]
    args: JSON | None = None


class FunctionResponse(_G):
    id: str | None = None
    name: Annotated[str, Field(min_length=1)]
    response: JSON


class Part(_G):
    text: str | None = None
    thought: StrictBool | None = None
    thought_signature: str | None = None
    inline_data: Blob | None = None
    file_data: FileData | None = None
    function_call: FunctionCall | None = None
    function_response: FunctionResponse | None = None


class Content(_G):
    role: str | None = None
    parts: list[Part] = Field(default_factory=list)


class FunctionDeclaration(_G):
    name: Annotated[str, Field(min_length=1)]
    description: str | None = None
    parameters: JSON | None = None
    parameters_json_schema: JSON | None = None


class Tool(_G):
    function_declarations: list[FunctionDeclaration] | None = None


class FunctionCallingConfig(_G):
    mode: Literal["MODE_UNSPECIFIED", "AUTO", "ANY", "NONE", "VALIDATED"] | None = None
    allowed_function_names: list[str] | None = None


class ToolConfig(_G):
    function_calling_config: FunctionCallingConfig | None = None


class ThinkingConfig(_G):
    include_thoughts: StrictBool | None = None
    thinking_budget: int | None = None
    thinking_level: str | None = None


class GenerationConfig(_G):
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=1)] | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    stop_sequences: Annotated[list[str], Field(max_length=4)] | None = None
    candidate_count: Annotated[int, Field(ge=1, le=8)] | None = None
    seed: int | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    response_mime_type: str | None = None
    response_schema: JSON | None = None
    response_json_schema: JSON | None = None
    thinking_config: ThinkingConfig | None = None


class GenerateContentRequest(_G):
    contents: Annotated[list[Content], Field(min_length=1)]
    system_instruction: Content | None = None
    tools: list[Tool] | None = None
    tool_config: ToolConfig | None = None
    generation_config: GenerationConfig | None = None
    safety_settings: list[JSON] | None = None
    cached_content: str | None = None

    @property
    def include_thoughts(self) -> bool:
        config = self.generation_config
        thinking = config.thinking_config if config else None
        return bool(thinking and thinking.include_thoughts)


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in {"str", "int", "float", "bool"} or "[" in part or part[:1].isupper():
            continue  # pydantic's union-branch labels are not part of the client's document
        else:
            out += ("." if out else "") + part
    return out


def invalid(message: str, field_path: str | None = None) -> InvalidRequest:
    """A 400 INVALID_ARGUMENT; Google's messages name the field in the text."""
    if field_path:
        message = f"Invalid value at '{field_path}': {message}"
    return InvalidRequest(message, param=field_path, code="invalid_argument")


def parse_request(body: bytes) -> GenerateContentRequest:
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"Invalid JSON payload received. {exc}") from None
    if not isinstance(raw, dict):
        raise invalid("Invalid JSON payload received. The body must be a JSON object.")
    try:
        req = GenerateContentRequest.model_validate(raw)
    except ValidationError as exc:
        first = max(reversed(exc.errors(include_url=False)), key=lambda e: len(e["loc"]))
        where = _path(tuple(first["loc"]))
        if first["type"] == "missing":
            raise InvalidRequest(
                f"* GenerateContentRequest.{where}: a value is required.",
                param=where,
                code="invalid_argument",
            ) from None
        raise invalid(first["msg"] + ".", where) from None
    if req.cached_content is not None:
        raise invalid(
            "cached content is not supported: this server keeps no state.", "cachedContent"
        )
    return req


# --- Gemini Schema (an OpenAPI 3.0 subset) → JSON Schema ---------------------------------


def _camel(key: str) -> str:
    return to_camel(key) if "_" in key else key


def to_json_schema(node: Any) -> Any:
    """Lower-case ``type`` names, ``nullable`` as a ``null`` type, Gemini-only
    ``propertyOrdering`` dropped; property names are the client's and stay as is."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: JSON = {}
    for raw_key, value in node.items():
        key = _camel(raw_key)
        if key == "type" and isinstance(value, str):
            if value.upper() != "TYPE_UNSPECIFIED":
                out["type"] = value.lower()
        elif key == "properties" and isinstance(value, dict):
            out["properties"] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "anyOf", "oneOf", "allOf", "not", "additionalProperties"):
            out[key] = to_json_schema(value)
        elif key not in ("nullable", "propertyOrdering"):
            out[key] = value
    if node.get("nullable") is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


# --- contents → messages ----------------------------------------------------------------


def standard_base64(value: str) -> str:
    """A proto ``bytes`` field in standard base64. Google accepts the URL-safe
    alphabet too, and google-genai sends it that way (pydantic's bytes encoding), but
    a signature is compared as the bytes it encodes: one canonical spelling keeps it
    the same string end to end. Google's documented dummy signature stays as is."""
    if value == SKIP_SIGNATURE:
        return value
    value = value.replace("-", "+").replace("_", "/")
    return value + "=" * (-len(value) % 4)


@dataclass
class _Conversation:
    messages: list[JSON] = field(default_factory=list)
    # Calls of model turns not answered yet: [call id, function name].
    pending: list[tuple[str, str]] = field(default_factory=list)

    def model_turn(self, content: Content, where: str) -> None:
        texts: list[str] = []
        calls: list[JSON] = []
        for k, part in enumerate(content.parts):
            if part.function_call is not None:
                fc = part.function_call
                # Gemini pairs calls and responses by order; chat needs ids.
                call_id = fc.id or f"call_{len(self.messages)}_{k}"
                call: JSON = {
                    "id": call_id,
                    "type": "function",
                    "function": {
                        "name": fc.name,
                        "arguments": orjson.dumps(fc.args or {}).decode(),
                    },
                }
                if part.thought_signature:
                    signature = standard_base64(part.thought_signature)
                    call["extra_content"] = {"google": {"thought_signature": signature}}
                calls.append(call)
                self.pending.append((call_id, fc.name))
            elif part.function_response is not None:
                raise invalid(
                    "a function response must be in a user turn.",
                    f"{where}.parts[{k}].functionResponse",
                )
            elif part.text is not None and not part.thought:
                texts.append(part.text)
            # Thoughts are the model's own summaries, never sent back; inline data
            # or files in a model turn have no chat equivalent.
        message: JSON = {"role": "assistant", "content": "".join(texts) or None}
        if calls:
            message["tool_calls"] = calls
        if message["content"] is not None or calls:
            self.messages.append(message)

    def _answer(self, response: FunctionResponse, where: str) -> str:
        for position, (call_id, name) in enumerate(self.pending):
            if (response.id and response.id == call_id) or (
                not response.id and response.name == name
            ):
                del self.pending[position]
                return call_id
        for position, (call_id, name) in enumerate(self.pending):
            if response.name == name:  # an id we never issued: pair by name
                del self.pending[position]
                return call_id
        raise invalid(
            f"function response '{response.name}' does not answer any earlier function call.",
            where,
        )

    def user_turn(self, content: Content, where: str) -> None:
        parts: list[JSON] = []
        for k, part in enumerate(content.parts):
            here = f"{where}.parts[{k}]"
            if part.function_response is not None:
                fr = part.function_response
                call_id = self._answer(fr, f"{here}.functionResponse")
                output = fr.response.get("output")
                # {"output": text} is how the proxy wraps a text tool result; sending the
                # text alone keeps that round trip exact. Anything else stays JSON.
                text = (
                    output
                    if set(fr.response) == {"output"} and isinstance(output, str)
                    else orjson.dumps(fr.response).decode()
                )
                self.messages.append({"role": "tool", "tool_call_id": call_id, "content": text})
            elif part.function_call is not None:
                raise invalid("a function call must be in a model turn.", f"{here}.functionCall")
            elif part.text is not None:
                if not part.thought:
                    parts.append({"type": "text", "text": part.text})
            elif part.inline_data is not None:
                parts.append(_inline(part.inline_data))
            elif part.file_data is not None:
                parts.append({"type": "image_url", "image_url": {"url": part.file_data.file_uri}})
        if parts:
            if all(p["type"] == "text" for p in parts):
                self.messages.append({"role": "user", "content": "".join(p["text"] for p in parts)})
            else:
                self.messages.append({"role": "user", "content": parts})


def _inline(blob: Blob) -> JSON:
    mime = blob.mime_type.lower()
    if mime.startswith("image/"):
        return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{blob.data}"}}
    if mime in AUDIO_FORMATS:
        return {
            "type": "input_audio",
            "input_audio": {"data": blob.data, "format": AUDIO_FORMATS[mime]},
        }
    return {"type": "file", "file": {"file_data": f"data:{mime};base64,{blob.data}"}}


def _messages(req: GenerateContentRequest) -> list[JSON]:
    conv = _Conversation()
    if req.system_instruction is not None:
        for part in req.system_instruction.parts:
            if part.text:
                conv.messages.append({"role": "system", "content": part.text})
    for index, content in enumerate(req.contents):
        where = f"contents[{index}]"
        role = content.role or "user"
        if role == "model":
            conv.model_turn(content, where)
        elif role in ("user", "function", "tool"):
            conv.user_turn(content, where)
        else:
            raise invalid(f"role must be 'user' or 'model', not {role!r}.", f"{where}.role")
    if not any(m["role"] != "system" for m in conv.messages):
        raise invalid("contents must contain at least one non-empty part.", "contents")
    return conv.messages


# --- tools and generation config ---------------------------------------------------------


def _tools(req: GenerateContentRequest) -> list[JSON]:
    tools: list[JSON] = []
    for tool in req.tools or ():
        # googleSearch, codeExecution, urlContext… run on Google's side: not offered.
        for declaration in tool.function_declarations or ():
            if declaration.parameters_json_schema is not None:
                parameters = declaration.parameters_json_schema
            elif declaration.parameters is not None:
                parameters = to_json_schema(declaration.parameters)
            else:
                parameters = {"type": "object", "properties": {}}
            function: JSON = {"name": declaration.name, "parameters": parameters}
            if declaration.description:
                function["description"] = declaration.description
            tools.append({"type": "function", "function": function})
    return tools


def _tool_choice(config: FunctionCallingConfig) -> str | JSON | None:
    mode = config.mode or "AUTO"
    names = config.allowed_function_names or []
    if mode == "NONE":
        return "none"
    if mode != "ANY":
        return None  # AUTO and VALIDATED: the provider's default
    if len(names) == 1:
        return {"type": "function", "function": {"name": names[0]}}
    if names:
        return {
            "type": "allowed_tools",
            "allowed_tools": {
                "mode": "required",
                "tools": [{"type": "function", "function": {"name": n}} for n in names],
            },
        }
    return "required"


def _effort(thinking: ThinkingConfig) -> str | None:
    if thinking.thinking_level:
        return thinking.thinking_level.lower()
    budget = thinking.thinking_budget
    if budget is None or budget < 0:
        return None  # -1: dynamic thinking, the model's default
    for limit, effort in _EFFORT_BUDGETS:
        if budget <= limit:
            return effort
    return "high"


def _generation(config: GenerationConfig, chat: JSON) -> None:
    for ours, theirs in (
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("top_k", "top_k"),
        ("max_output_tokens", "max_completion_tokens"),
        ("stop_sequences", "stop"),
        ("candidate_count", "n"),
        ("seed", "seed"),
        ("presence_penalty", "presence_penalty"),
        ("frequency_penalty", "frequency_penalty"),
    ):
        value = getattr(config, ours)
        if value is not None:
            chat[theirs] = value
    mime = (config.response_mime_type or "text/plain").lower()
    if mime == "application/json":
        if config.response_json_schema is not None:
            schema = config.response_json_schema
        elif config.response_schema is not None:
            schema = to_json_schema(config.response_schema)
        else:
            schema = None
        chat["response_format"] = (
            {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}
            if schema is not None
            else {"type": "json_object"}
        )
    elif mime != "text/plain":
        raise invalid(
            f"response MIME type {config.response_mime_type!r} is not supported "
            "(text/plain or application/json).",
            "generationConfig.responseMimeType",
        )
    if config.thinking_config is not None:
        effort = _effort(config.thinking_config)
        if effort is not None:
            chat["reasoning_effort"] = effort


def to_chat(req: GenerateContentRequest, model: str, *, stream: bool) -> JSON:
    """The OpenAI chat request for ``req`` sent to ``model`` (the path's model)."""
    chat: JSON = {"model": model, "messages": _messages(req)}
    tools = _tools(req)
    if tools:
        chat["tools"] = tools
        config = req.tool_config.function_calling_config if req.tool_config else None
        choice = _tool_choice(config) if config is not None else None
        if choice is not None:
            chat["tool_choice"] = choice
    if req.generation_config is not None:
        _generation(req.generation_config, chat)
    if stream:
        chat["stream"] = True
        # Usage always: the last event carries usageMetadata, and so does the trajectory.
        chat["stream_options"] = {"include_usage": True}
    return chat
