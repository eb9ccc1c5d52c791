"""Anthropic Messages request → OpenAI chat request, as pure functions.

:func:`parse_request` validates a ``POST /v1/messages`` (or ``count_tokens``) body
into :class:`MessagesRequest`, raising :class:`~shared.errors.InvalidRequest` with
Anthropic's own way of naming a field (``messages.1.content.0.text.text: Field
required``). :func:`to_openai` turns it into the OpenAI chat request the proxy reads.
The answer's way back is in :mod:`services.gateway.ingress.anthropic`.

Mapping (lossy where noted; the proxy's Anthropic adapter documents the reverse):

* **System.** ``system`` (string or text blocks) → a leading ``system`` message; a
  ``{"role": "system"}`` entry in ``messages`` (claude-code sends one mid-conversation)
  → a ``system`` message at the same place (the Anthropic adapter keeps it there as a
  ``<system-reminder>``).
* **Turns.** ``tool_result`` blocks → ``tool`` messages placed before the rest of
  their user turn (``is_error`` has no OpenAI field and is dropped); ``tool_use`` →
  ``tool_calls`` (``input`` serialised as the arguments string); ``thinking`` and
  ``redacted_thinking`` → the assistant message's ``thinking_blocks`` extra, which
  the Anthropic adapter replays with their signatures. Images (``base64`` → a data
  URL, ``url`` → the URL) → ``image_url`` parts; a base64 PDF ``document`` → a
  ``file`` part. Other block types are a 400 naming the block.
* **Parameters.** ``max_tokens`` → ``max_tokens``; ``stop_sequences`` → ``stop`` (at
  most 4, OpenAI's limit); ``temperature``/``top_p`` as given; ``metadata.user_id`` →
  ``user``; ``tools`` → ``function`` tools (server tools, i.e. any other ``type``, as
  given); ``tool_choice`` ``auto``/``any``/``tool``/``none`` → ``auto``/``required``/
  a named function/``none``, ``disable_parallel_tool_use`` → ``parallel_tool_calls:
  false``. Streams ask for ``stream_options.include_usage`` so usage always arrives.
* **Anthropic-only features** — ``cache_control`` (on blocks, tools, top level),
  ``thinking`` blocks, ``top_k``, ``thinking``, ``output_config``,
  ``context_management``, ``inference_geo`` and the ``anthropic-beta`` header (as the
  ``anthropic_beta`` body field) — are attached as extra fields *only when the model is
  served by the Anthropic adapter* (:func:`served_by_anthropic`: an ``anthropic/…``
  name or a bare ``claude-…`` one, the proxy's own routing rule). OpenAI-compatible
  upstreams receive the body almost verbatim and reject unknown fields, so for every
  other model they are dropped, except ``output_config.format`` which becomes
  ``response_format`` (``json_schema``). An alias that routes to Anthropic under
  another name therefore loses them.
* Unknown top-level fields (``service_tier``, ``container``, ``mcp_servers``…) are
  tolerated and dropped.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from shared.errors import InvalidRequest

Json = dict[str, Any]

MAX_STOP_SEQUENCES = 4  # OpenAI's limit, which the proxy's request model enforces


class _Open(BaseModel):
    # Unknown fields are tolerated (and dropped): the API grows faster than we do.
    model_config = ConfigDict(extra="allow")


class TextBlock(_Open):
    type: Literal["text"]
    text: str
    cache_control: Json | None = None


class Base64Source(_Open):
    type: Literal["base64"]
    media_type: str
    data: str


class UrlSource(_Open):
    type: Literal["url"]
    url: str


class ImageBlock(_Open):
    type: Literal["image"]
    source: Annotated[Base64Source | UrlSource, Field(discriminator="type")]
    cache_control: Json | None = None


class DocumentBlock(_Open):
    type: Literal["document"]
    source: Json
    cache_control: Json | None = None


ResultPart = Annotated[TextBlock | ImageBlock | DocumentBlock, Field(discriminator="type")]


class ToolResultBlock(_Open):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[ResultPart] | None = None
    is_error: bool | None = None
    cache_control: Json | None = None


class ToolUseBlock(_Open):
    type: Literal["tool_use"]
    id: str
    name: str
    input: Json
    cache_control: Json | None = None


class ThinkingBlock(_Open):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(_Open):
    type: Literal["redacted_thinking"]
    data: str


Block = Annotated[
    TextBlock
    | ImageBlock
    | DocumentBlock
    | ToolResultBlock
    | ToolUseBlock
    | ThinkingBlock
    | RedactedThinkingBlock,
    Field(discriminator="type"),
]


class InputMessage(_Open):
    role: Literal["user", "assistant", "system"]
    content: str | list[Block]


class ToolChoice(_Open):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class MessagesRequest(_Open):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    max_tokens: Annotated[int, Field(ge=1)]
    messages: Annotated[list[InputMessage], Field(min_length=1)]
    system: str | list[TextBlock] | None = None
    stream: StrictBool | None = None
    stop_sequences: list[str] | None = None
    temperature: Annotated[float, Field(ge=0, le=1)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    tools: list[Json] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Json | None = None
    metadata: Json | None = None
    output_config: Json | None = None
    context_management: Json | None = None


class CountTokensRequest(MessagesRequest):
    """``/v1/messages/count_tokens`` takes the same body without ``max_tokens``."""

    max_tokens: Annotated[int, Field(ge=1)] | None = None  # type: ignore[assignment]


def _location(loc: tuple[int | str, ...]) -> str:
    # pydantic names union branches ("str", "list[...]"); Anthropic's messages don't,
    # but they do keep a tagged union's tag ("content.0.text.text").
    kept = [
        str(part)
        for part in loc
        if isinstance(part, int) or not (part in {"str", "int", "float", "bool"} or "[" in part)
    ]
    return ".".join(kept)


RequestT = TypeVar("RequestT", bound=MessagesRequest)


def parse_request(body: bytes, model: type[RequestT]) -> RequestT:
    """Validate a Messages body; :class:`InvalidRequest` names the field."""
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"There was an error parsing the body of your request as JSON: {exc}",
            code="invalid_json",
        ) from None
    if not isinstance(raw, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        # For unions pydantic reports one error per branch; the deepest one says
        # what is actually wrong with the client's document.
        first = max(reversed(exc.errors(include_url=False)), key=lambda e: len(e["loc"]))
        where = _location(tuple(first["loc"]))
        raise InvalidRequest(
            f"{where}: {first['msg']}" if where else str(first["msg"]),
            param=where or None,
            code="invalid_value" if first["type"] != "missing" else "missing_required_parameter",
        ) from None


def served_by_anthropic(model: str) -> bool:
    """Whether the proxy hands ``model`` to its Anthropic adapter (mirrors its routing:
    the ``anthropic/`` prefix, or the adapter's bare-name pattern ``claude-*``)."""
    provider, slash, _ = model.partition("/")
    return provider == "anthropic" if slash else model.startswith("claude-")


def header_betas(values: list[str]) -> list[str]:
    """``anthropic-beta`` header values (repeated and/or comma-separated), in order."""
    betas: list[str] = []
    for value in values:
        for piece in value.split(","):
            beta = piece.strip()
            if beta and beta not in betas:
                betas.append(beta)
    return betas


# --- request -----------------------------------------------------------------------------


def to_openai(req: MessagesRequest, *, betas: list[str], stream: bool) -> Json:
    """The OpenAI chat request for ``req`` (see the module docstring for the mapping)."""
    native = served_by_anthropic(req.model)
    messages: list[Json] = []
    if req.system:
        system = (
            [TextBlock(type="text", text=req.system)] if isinstance(req.system, str) else req.system
        )
        messages.append({"role": "system", "content": _text_content(system, native)})
    for i, message in enumerate(req.messages):
        where = f"messages.{i}"
        blocks_in: list[Any] = (
            [TextBlock(type="text", text=message.content)]
            if isinstance(message.content, str)
            else message.content
        )
        if message.role == "user":
            messages.extend(_user(blocks_in, where, native))
        elif message.role == "assistant":
            messages.extend(_assistant(blocks_in, where, native))
        else:
            messages.append({"role": "system", "content": _system(blocks_in, where, native)})
    out: Json = {"model": req.model, "messages": messages}
    if req.max_tokens is not None:
        out["max_tokens"] = req.max_tokens
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    _parameters(req, out, native)
    if native and betas:
        out["anthropic_beta"] = betas
    return out


def _parameters(req: MessagesRequest, out: Json, native: bool) -> None:
    if req.stop_sequences:
        if len(req.stop_sequences) > MAX_STOP_SEQUENCES:
            raise InvalidRequest(
                f"stop_sequences: at most {MAX_STOP_SEQUENCES} stop sequences are supported "
                "by this gateway.",
                param="stop_sequences",
                code="invalid_value",
            )
        out["stop"] = list(req.stop_sequences)
    if req.temperature is not None:
        out["temperature"] = req.temperature
    if req.top_p is not None:
        out["top_p"] = req.top_p
    user = (req.metadata or {}).get("user_id")
    if isinstance(user, str) and user:
        out["user"] = user
    if req.tools:
        out["tools"] = [_tool(tool, i, native) for i, tool in enumerate(req.tools)]
        if req.tool_choice is not None:
            _tool_choice(req.tool_choice, out)
    if native:
        # The fields the Anthropic adapter forwards as given.
        extra = req.model_extra or {}
        fields = {
            "top_k": req.top_k,
            "thinking": req.thinking,
            "output_config": req.output_config,
            "context_management": req.context_management,
            "inference_geo": extra.get("inference_geo"),
            "cache_control": extra.get("cache_control"),
        }
        out.update({name: value for name, value in fields.items() if value is not None})
    elif req.output_config and isinstance(req.output_config.get("format"), dict):
        fmt = req.output_config["format"]
        if fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict):
            spec = {"name": "output", "schema": fmt["schema"], "strict": True}
            out["response_format"] = {"type": "json_schema", "json_schema": spec}


def _text_part(block: TextBlock, native: bool) -> Json:
    part: Json = {"type": "text", "text": block.text}
    if native and block.cache_control is not None:
        part["cache_control"] = block.cache_control
    return part


def _text_content(blocks: list[TextBlock], native: bool) -> str | list[Json]:
    """A plain string when one uncached block says it all, else text parts."""
    parts = [_text_part(block, native) for block in blocks]
    if len(parts) == 1 and "cache_control" not in parts[0]:
        text: str = parts[0]["text"]
        return text
    return parts


def _system(blocks: list[Any], where: str, native: bool) -> str | list[Json]:
    for j, block in enumerate(blocks):
        if not isinstance(block, TextBlock):
            raise InvalidRequest(
                f"{where}.content.{j}: a system message may only contain text blocks.",
                param=f"{where}.content.{j}",
                code="invalid_value",
            )
    return _text_content(blocks, native)


def _image_part(block: ImageBlock, native: bool) -> Json:
    source = block.source
    url = (
        f"data:{source.media_type};base64,{source.data}"
        if isinstance(source, Base64Source)
        else source.url
    )
    part: Json = {"type": "image_url", "image_url": {"url": url}}
    if native and block.cache_control is not None:
        part["cache_control"] = block.cache_control
    return part


def _document_part(block: DocumentBlock, where: str, native: bool) -> Json:
    source = block.source
    if not (
        source.get("type") == "base64"
        and source.get("media_type") == "application/pdf"
        and isinstance(source.get("data"), str)
    ):
        raise InvalidRequest(
            f"{where}.source: only base64 PDF documents are supported by this gateway.",
            param=f"{where}.source",
            code="unsupported_value",
        )
    part: Json = {
        "type": "file",
        "file": {
            "filename": "document.pdf",
            "file_data": f"data:application/pdf;base64,{source['data']}",
        },
    }
    if native and block.cache_control is not None:
        part["cache_control"] = block.cache_control
    return part


def _media_part(block: Any, where: str, native: bool) -> Json:
    if isinstance(block, TextBlock):
        return _text_part(block, native)
    if isinstance(block, ImageBlock):
        return _image_part(block, native)
    return _document_part(block, where, native)


def _user(blocks: list[Any], where: str, native: bool) -> list[Json]:
    """Tool results first (as ``tool`` messages), then the rest of the turn."""
    tools: list[Json] = []
    parts: list[Json] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content.{j}"
        if isinstance(block, ToolResultBlock):
            message, moved = _tool_result(block, at, native)
            tools.append(message)
            parts.extend(moved)
        elif isinstance(block, TextBlock | ImageBlock | DocumentBlock):
            parts.append(_media_part(block, at, native))
        else:
            raise InvalidRequest(
                f"{at}: '{block.type}' blocks are only allowed in assistant messages.",
                param=at,
                code="invalid_value",
            )
    if not parts:
        return tools
    if len(parts) == 1 and parts[0]["type"] == "text" and "cache_control" not in parts[0]:
        return [*tools, {"role": "user", "content": parts[0]["text"]}]
    return [*tools, {"role": "user", "content": parts}]


def _tool_result(block: ToolResultBlock, where: str, native: bool) -> tuple[Json, list[Json]]:
    """The ``tool`` message, and parts that must follow it in a user message instead
    (images: only the Anthropic adapter takes them inside a tool result)."""
    message: Json = {"role": "tool", "tool_call_id": block.tool_use_id}
    moved: list[Json] = []
    content = block.content
    if content is None or isinstance(content, str):
        message["content"] = content or ""
    else:
        parts: list[Json] = []
        for k, inner in enumerate(content):
            part = _media_part(inner, f"{where}.content.{k}", native)
            (parts if native or part["type"] == "text" else moved).append(part)
        message["content"] = parts if parts else ""
    if native and block.cache_control is not None:
        message["cache_control"] = block.cache_control
    return message, moved


def _assistant(blocks: list[Any], where: str, native: bool) -> list[Json]:
    texts: list[TextBlock] = []
    tool_calls: list[Json] = []
    thinking: list[Json] = []
    for j, block in enumerate(blocks):
        if isinstance(block, TextBlock):
            if block.text:
                texts.append(block)
        elif isinstance(block, ToolUseBlock):
            function = {"name": block.name, "arguments": orjson.dumps(block.input).decode()}
            tool_calls.append({"id": block.id, "type": "function", "function": function})
        elif isinstance(block, ThinkingBlock):
            kept: Json = {"type": "thinking", "thinking": block.thinking}
            if block.signature is not None:
                kept["signature"] = block.signature
            thinking.append(kept)
        elif isinstance(block, RedactedThinkingBlock):
            thinking.append({"type": "redacted_thinking", "data": block.data})
        else:
            at = f"{where}.content.{j}"
            raise InvalidRequest(
                f"{at}: '{block.type}' blocks are not allowed in assistant messages.",
                param=at,
                code="invalid_value",
            )
    message: Json = {
        "role": "assistant",
        "content": _text_content(texts, native) if texts else None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    if native and thinking:
        message["thinking_blocks"] = thinking
    elif message["content"] is None and not tool_calls:
        return []  # nothing an OpenAI-shaped upstream could take
    return [message]


def _tool(tool: Json, i: int, native: bool) -> Json:
    kind = tool.get("type")
    if kind not in (None, "custom"):
        return tool  # a server tool (web search, code execution…): the upstream decides
    name, schema = tool.get("name"), tool.get("input_schema")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(
            f"tools.{i}.custom.name: Field required", param=f"tools.{i}.name", code="invalid_value"
        )
    if not isinstance(schema, dict):
        raise InvalidRequest(
            f"tools.{i}.custom.input_schema: Input should be a valid dictionary",
            param=f"tools.{i}.input_schema",
            code="invalid_value",
        )
    function: Json = {"name": name, "parameters": schema}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    if tool.get("strict") is True:
        function["strict"] = True
    out: Json = {"type": "function", "function": function}
    if native and tool.get("cache_control") is not None:
        out["cache_control"] = tool["cache_control"]
    return out


def _tool_choice(choice: ToolChoice, out: Json) -> None:
    if choice.type == "tool":
        if not choice.name:
            raise InvalidRequest(
                "tool_choice.tool.name: Field required",
                param="tool_choice.name",
                code="invalid_value",
            )
        out["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    else:
        out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
    if choice.disable_parallel_tool_use and choice.type != "none":
        out["parallel_tool_calls"] = False


# --- count_tokens ------------------------------------------------------------------------

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 3
#: Anthropic bills an image by its size (about width x height / 750, ~1,600 at most);
#: without decoding it we count the ceiling, as a context-fit check wants.
TOKENS_PER_IMAGE = 1600


def estimate_input_tokens(req: MessagesRequest) -> int:
    """An estimate for ``count_tokens``: about four characters per token over every
    text, tool input and tool definition, a few tokens per message, and
    :data:`TOKENS_PER_IMAGE` per image or document. Never exact; never sent upstream."""
    chars = 0
    fixed = 0
    if isinstance(req.system, str):
        chars += len(req.system)
    elif req.system:
        chars += sum(len(block.text) for block in req.system)
    for message in req.messages:
        fixed += TOKENS_PER_MESSAGE
        if isinstance(message.content, str):
            chars += len(message.content)
            continue
        for block in message.content:
            inner: list[Any] = [block]
            if isinstance(block, ToolResultBlock):
                content = block.content
                inner = [] if content is None else content if isinstance(content, list) else []
                chars += len(content) if isinstance(content, str) else 0
            for part in inner:
                if isinstance(part, TextBlock):
                    chars += len(part.text)
                elif isinstance(part, ImageBlock | DocumentBlock):
                    fixed += TOKENS_PER_IMAGE
                elif isinstance(part, ToolUseBlock):
                    chars += len(part.name) + len(orjson.dumps(part.input))
                elif isinstance(part, ThinkingBlock):
                    chars += len(part.thinking)
    for tool in req.tools or ():
        chars += len(orjson.dumps(tool))
    return fixed + -(-chars // CHARS_PER_TOKEN)
