"""OpenAI chat request → Gemini ``GenerateContentRequest``: pure translation, no I/O.

:func:`encode_request` turns a validated client request into the JSON body of
``models/{model}:generateContent`` (``:streamGenerateContent?alt=sse`` takes the
same body), including the conversion of JSON Schema (tool parameters, structured
output) to the OpenAPI subset Gemini accepts (:func:`to_gemini_schema`). The way
back — responses, stream documents, errors — is in
:mod:`services.proxy.providers.gemini`, next to the HTTP code that reads them.

The mapping, and every place where it is lossy, is described in the docstring of
:mod:`services.proxy.providers.gemini`; the comments here say what must stay true.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson

from shared.errors import InvalidRequest
from shared.openai_chat import ChatCompletionRequest, ImagePart, Message, TextPart

JSON = dict[str, Any]

# Documented by Google for histories whose function calls carry no signature
# (written by another model, or by a client that dropped ``extra_content``).
SKIP_SIGNATURE = "skip_thought_signature_validator"

# Image types Gemini reads, by URL suffix. A fixed table (not ``mimetypes``, whose
# answers depend on the host's /etc/mime.types) so translation is deterministic.
IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".heic": "image/heic",
    ".heif": "image/heif",
    ".gif": "image/gif",
}
AUDIO_TYPES = {"wav": "audio/wav", "mp3": "audio/mp3"}

# reasoning_effort → Gemini 2.5 thinkingBudget (the table of Google's own
# OpenAI-compatible endpoint); Gemini 3+ take thinkingLevel instead.
THINKING_BUDGETS = {"none": 0, "minimal": 1024, "low": 1024, "medium": 8192, "high": 24576}

# --- JSON Schema → Gemini Schema (an OpenAPI 3.0 subset) -----------------------------

_COPIED_KEYWORDS = (
    "title",
    "description",
    "nullable",
    "default",
    "example",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "minProperties",
    "maxProperties",
    "minimum",
    "maximum",
    "pattern",
    "propertyOrdering",
)
_FORMATS = {
    "STRING": {"enum", "date-time"},
    "NUMBER": {"float", "double"},
    "INTEGER": {"int32", "int64"},
}
_TYPES = {"string", "number", "integer", "boolean", "array", "object"}
# A client's schema is untrusted input: shared $refs could expand exponentially.
_MAX_SCHEMA_NODES = 5000
_MAX_SCHEMA_DEPTH = 32


def to_gemini_schema(schema: Any) -> JSON:
    """Convert a JSON Schema to the subset Gemini accepts; ``{}`` means "any value".

    Local ``$ref``s are inlined (a recursive one becomes "any value" where it
    recurs), ``allOf`` is merged, ``oneOf`` becomes ``anyOf``, ``["x", "null"]`` and
    ``anyOf [.., {"type": "null"}]`` become ``nullable``, ``const`` a one-value
    ``enum``; keywords Gemini rejects (``additionalProperties``, ``$schema``,
    ``not``, ``if``…) are dropped. An object without properties loses its type,
    since Gemini refuses an OBJECT without any.
    """
    if not isinstance(schema, dict):
        return {}
    defs: JSON = {}
    for key in ("definitions", "$defs"):
        if isinstance(schema.get(key), dict):
            defs.update(schema[key])
    return _SchemaConverter(defs).convert(schema, 0)


class _SchemaConverter:
    __slots__ = ("_active", "_budget", "_defs")

    def __init__(self, defs: Mapping[str, Any]) -> None:
        self._defs = defs
        self._budget = _MAX_SCHEMA_NODES
        self._active: list[str] = []  # the $refs being expanded on the current path

    def _target(self, ref: str) -> JSON | None:
        if not ref.startswith("#/"):
            return None
        target = self._defs.get(ref.rsplit("/", 1)[-1])
        return target if isinstance(target, dict) else None

    def convert(self, node: Any, depth: int) -> JSON:
        self._budget -= 1
        if not isinstance(node, dict) or depth > _MAX_SCHEMA_DEPTH or self._budget < 0:
            return {}
        ref = node.get("$ref")
        if isinstance(ref, str):
            if ref in self._active:
                return {
                    k: node[k] for k in ("description", "title") if isinstance(node.get(k), str)
                }
            merged = {**(self._target(ref) or {}), **node}
            merged.pop("$ref")
            self._active.append(ref)
            try:
                return self.convert(merged, depth + 1)
            finally:
                self._active.pop()
        all_of = node.get("allOf")
        if isinstance(all_of, list) and all_of:
            node = self._merge_all_of({k: v for k, v in node.items() if k != "allOf"}, all_of)
        out: JSON = {}
        nullable = node.get("nullable") is True
        type_ = node.get("type")
        if isinstance(type_, list):
            nullable = nullable or "null" in type_
            kinds = [t for t in type_ if t in _TYPES]
            if len(kinds) > 1:
                rest = {k: v for k, v in node.items() if k != "type"}
                out["anyOf"] = [self.convert({**rest, "type": t}, depth + 1) for t in kinds]
                type_ = None
            else:
                type_ = kinds[0] if kinds else None
        elif type_ == "null":
            nullable, type_ = True, None
        variants = node.get("anyOf", node.get("oneOf"))
        if isinstance(variants, list) and "anyOf" not in out:
            kept = [v for v in variants if not (isinstance(v, dict) and v.get("type") == "null")]
            nullable = nullable or len(kept) < len(variants)
            converted = [self.convert(v, depth + 1) for v in kept]
            if len(converted) == 1:
                out.update(converted[0])
            elif converted:
                out["anyOf"] = converted
        if type_ is None and ("properties" in node or "required" in node):
            type_ = "object"
        if isinstance(type_, str) and type_ in _TYPES:
            out["type"] = type_.upper()
        for key in _COPIED_KEYWORDS:
            if key in node and key not in out:
                out[key] = node[key]
        enum = [node["const"]] if "const" in node else node.get("enum")
        if isinstance(enum, list):
            nullable = nullable or None in enum
            values = [v for v in enum if v is not None]
            # Gemini enums are string-only; a numeric enum keeps only its type.
            if values and all(isinstance(v, str) for v in values):
                out["enum"] = values
                out.setdefault("type", "STRING")
        fmt = node.get("format")
        if isinstance(fmt, str) and fmt in _FORMATS.get(out.get("type", ""), ()):
            out["format"] = fmt
        if out.get("type") == "ARRAY":
            items = node.get("items", node.get("prefixItems"))
            if isinstance(items, list):
                items = items[0] if items else {}
            out["items"] = self.convert(items, depth + 1)
        if out.get("type") == "OBJECT":
            self._object(node, out, depth)
        else:
            out.pop("propertyOrdering", None)
        if nullable:
            out["nullable"] = True
        return out

    def _object(self, node: Mapping[str, Any], out: JSON, depth: int) -> None:
        properties = node.get("properties")
        if not isinstance(properties, dict) or not properties:
            # A free-form object: Gemini rejects OBJECT without properties.
            del out["type"]
            out.pop("propertyOrdering", None)
            return
        out["properties"] = {
            str(name): self.convert(sub, depth + 1) for name, sub in properties.items()
        }
        required = node.get("required")
        if isinstance(required, list):
            known = [r for r in required if r in out["properties"]]
            if known:
                out["required"] = known

    def _merge_all_of(self, base: JSON, parts: list[Any]) -> JSON:
        merged = dict(base)
        for raw in parts:
            part = raw
            if isinstance(raw, dict) and isinstance(raw.get("$ref"), str):
                part = self._target(str(raw["$ref"])) or {}
            if not isinstance(part, dict):
                continue
            for key, value in part.items():
                if key == "properties" and isinstance(value, dict):
                    merged["properties"] = {**merged.get("properties", {}), **value}
                elif key == "required" and isinstance(value, list):
                    merged["required"] = [*merged.get("required", []), *value]
                else:
                    merged.setdefault(key, value)
        return merged


# --- request ---------------------------------------------------------------------------


def encode_request(request: ChatCompletionRequest, model: str) -> bytes:
    """The ``GenerateContentRequest`` JSON for ``request``; raises :class:`InvalidRequest`
    for what Gemini cannot express (the client sees a 400 naming the parameter)."""
    system, contents = _contents(request.messages)
    if not contents:
        raise InvalidRequest(
            "Gemini needs at least one user or assistant message besides system messages.",
            param="messages",
            code="invalid_value",
        )
    body: JSON = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    tools, tool_config = _tools(request)
    if tools:
        body["tools"] = tools
    if tool_config:
        body["toolConfig"] = tool_config
    config = _generation_config(request, model)
    if config:
        body["generationConfig"] = config
    return orjson.dumps(body)


def _contents(messages: Sequence[Message]) -> tuple[list[JSON], list[JSON]]:
    system: list[JSON] = []
    contents: list[JSON] = []
    # tool_call_id → function name, updated message by message so a reused id maps
    # to its most recent call, as the conversation itself meant.
    names: dict[str, str] = {}
    for i, message in enumerate(messages):
        if message.role in ("system", "developer"):
            system.extend({"text": text} for text in _texts(message, i, system=True))
        elif message.role == "user":
            _append(contents, "user", _user_parts(message, i))
        elif message.role == "assistant":
            _append(contents, "model", _assistant_parts(message, i, names))
        else:  # "tool", or the legacy "function"
            _append(contents, "user", [_function_response(message, i, names)])
    return system, contents


def _append(contents: list[JSON], role: str, parts: list[JSON]) -> None:
    if not parts:
        return
    # Consecutive turns of one role become one Content: Gemini expects the function
    # responses of a step together, and older models insist on alternation.
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


def _texts(message: Message, index: int, *, system: bool = False) -> list[str]:
    content = message.content
    if content is None:
        return []
    if isinstance(content, str):
        return [content] if content else []
    texts: list[str] = []
    for j, part in enumerate(content):
        if isinstance(part, TextPart):
            if part.text:
                texts.append(part.text)
        elif part.type != "refusal" or system:
            raise InvalidRequest(
                f"Content parts of type '{part.type}' are only supported in user messages.",
                param=f"messages[{index}].content[{j}]",
                code="invalid_value",
            )
    return texts


def _user_parts(message: Message, index: int) -> list[JSON]:
    content = message.content
    if content is None or isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[JSON] = []
    for j, part in enumerate(content):
        param = f"messages[{index}].content[{j}]"
        if isinstance(part, TextPart):
            if part.text:  # Gemini rejects empty text parts
                parts.append({"text": part.text})
        elif isinstance(part, ImagePart):
            parts.append(_media(part.image_url.url, f"{param}.image_url.url", image=True))
        elif part.type == "input_audio":
            audio = (part.model_extra or {}).get("input_audio") or {}
            mime = AUDIO_TYPES.get(str(audio.get("format")))
            if mime is None or not isinstance(audio.get("data"), str):
                raise InvalidRequest(
                    "input_audio needs base64 'data' and a 'format' of wav or mp3.",
                    param=f"{param}.input_audio",
                    code="invalid_value",
                )
            parts.append({"inlineData": {"mimeType": mime, "data": audio["data"]}})
        elif part.type == "file":
            file = (part.model_extra or {}).get("file") or {}
            data = file.get("file_data")
            if not isinstance(data, str):
                raise InvalidRequest(
                    "Gemini takes files as base64 data URLs in 'file_data'; OpenAI file ids "
                    "cannot be resolved.",
                    param=f"{param}.file",
                    code="invalid_value",
                )
            parts.append(_media(data, f"{param}.file.file_data", image=False))
        else:
            raise InvalidRequest(
                f"Content parts of type '{part.type}' are not supported by Gemini.",
                param=param,
                code="invalid_value",
            )
    return parts


def _media(url: str, param: str, *, image: bool) -> JSON:
    if url.startswith("data:"):
        header, comma, data = url[5:].partition(",")
        if not comma or not header.endswith(";base64"):
            raise InvalidRequest(
                "Data URLs must be base64 encoded (data:<type>;base64,<data>).",
                param=param,
                code="invalid_value",
            )
        mime = header[: -len(";base64")].split(";")[0] or "application/octet-stream"
        return {"inlineData": {"mimeType": mime, "data": data}}
    parts = urlsplit(url)
    if image and parts.scheme.lower() in ("http", "https", "gs"):
        # Gemini fetches the URL itself; we never download what a client names.
        file: JSON = {"fileUri": url}
        guessed = IMAGE_TYPES.get(os.path.splitext(parts.path)[1].lower())
        if guessed:
            file["mimeType"] = guessed
        return {"fileData": file}
    raise InvalidRequest(
        "Images must be http(s) URLs or base64 data URLs.", param=param, code="invalid_value"
    )


def _assistant_parts(message: Message, index: int, names: dict[str, str]) -> list[JSON]:
    parts: list[JSON] = [{"text": text} for text in _texts(message, index)]
    legacy = (message.model_extra or {}).get("function_call")
    if isinstance(legacy, dict) and isinstance(legacy.get("name"), str):
        args = _arguments(legacy.get("arguments"), f"messages[{index}].function_call.arguments")
        parts.append({"functionCall": {"name": legacy["name"], "args": args}})
    for k, call in enumerate(message.tool_calls or ()):
        param = f"messages[{index}].tool_calls[{k}]"
        if call.type != "function":
            raise InvalidRequest(
                f"Tool calls of type '{call.type}' are not supported by Gemini.",
                param=f"{param}.type",
                code="invalid_value",
            )
        names[call.id] = call.function.name
        part: JSON = {
            "functionCall": {
                "name": call.function.name,
                "args": _arguments(call.function.arguments, f"{param}.function.arguments"),
            }
        }
        signature = _signature(call.model_extra)
        # Gemini 3 rejects a step whose first function call has no signature.
        if signature is None and k == 0:
            signature = SKIP_SIGNATURE
        if signature:
            part["thoughtSignature"] = signature
        parts.append(part)
    return parts


def _signature(extra: Mapping[str, Any] | None) -> str | None:
    content = (extra or {}).get("extra_content")
    google = content.get("google") if isinstance(content, dict) else None
    signature = google.get("thought_signature") if isinstance(google, dict) else None
    return signature if isinstance(signature, str) and signature else None


def _arguments(raw: Any, param: str) -> JSON:
    if raw is None or raw == "":
        return {}
    try:
        args = orjson.loads(raw) if isinstance(raw, str) else raw
    except orjson.JSONDecodeError:
        args = None
    if not isinstance(args, dict):
        raise InvalidRequest(
            "Gemini needs function call arguments to be a JSON object.",
            param=param,
            code="invalid_value",
        )
    return args


def _function_response(message: Message, index: int, names: Mapping[str, str]) -> JSON:
    name = names.get(message.tool_call_id or "") or message.name
    if not name:
        raise InvalidRequest(
            f"The tool message's tool_call_id {message.tool_call_id!r} matches no tool call "
            "of an earlier assistant message (Gemini needs the function name).",
            param=f"messages[{index}].tool_call_id",
            code="invalid_value",
        )
    text = "".join(_texts(message, index))
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        parsed = None
    # A JSON object is passed as the structured response; anything else is wrapped.
    response = parsed if isinstance(parsed, dict) else {"output": text}
    return {"functionResponse": {"name": name, "response": response}}


def _tools(request: ChatCompletionRequest) -> tuple[list[JSON], JSON | None]:
    if not request.tools:
        return [], None
    declarations: list[JSON] = []
    for k, tool in enumerate(request.tools):
        function = tool.get("function")
        if tool.get("type") != "function" or not isinstance(function, dict):
            raise InvalidRequest(
                f"Tools of type '{tool.get('type')}' are not supported by Gemini.",
                param=f"tools[{k}].type",
                code="invalid_value",
            )
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(
                "A function tool needs a name.",
                param=f"tools[{k}].function.name",
                code="invalid_value",
            )
        declaration: JSON = {"name": name}
        if isinstance(function.get("description"), str) and function["description"]:
            declaration["description"] = function["description"]
        parameters = to_gemini_schema(function.get("parameters"))
        if "properties" in parameters:  # a function without parameters leaves it unset
            declaration["parameters"] = parameters
        declarations.append(declaration)
    choice = request.tool_choice
    mode: str | None = None
    allowed: list[str] | None = None
    if choice == "none":
        mode = "NONE"
    elif choice == "auto":
        mode = "AUTO"
    elif choice == "required":
        mode = "ANY"
    elif isinstance(choice, dict):
        function = choice.get("function")
        restricted = choice.get("allowed_tools")
        if choice.get("type") == "function" and isinstance(function, dict):
            mode, allowed = "ANY", [str(function.get("name"))]
        elif choice.get("type") == "allowed_tools" and isinstance(restricted, dict):
            wanted = {
                str(t["function"].get("name"))
                for t in restricted.get("tools") or ()
                if isinstance(t, dict) and isinstance(t.get("function"), dict)
            }
            if restricted.get("mode") == "required":
                mode, allowed = "ANY", [d["name"] for d in declarations if d["name"] in wanted]
            else:
                # Gemini restricts names only in ANY mode: offer just the allowed tools.
                mode = "AUTO"
                declarations = [d for d in declarations if d["name"] in wanted]
        else:
            raise InvalidRequest(
                "Unsupported tool_choice.", param="tool_choice", code="invalid_value"
            )
    elif choice is not None:
        raise InvalidRequest("Unsupported tool_choice.", param="tool_choice", code="invalid_value")
    config: JSON | None = None
    if mode is not None:
        calling: JSON = {"mode": mode}
        if allowed:
            calling["allowedFunctionNames"] = allowed
        config = {"functionCallingConfig": calling}
    return ([{"functionDeclarations": declarations}] if declarations else []), config


def _generation_config(request: ChatCompletionRequest, model: str) -> JSON:
    config: JSON = {}
    if request.stop is not None:
        stops = [request.stop] if isinstance(request.stop, str) else list(request.stop)
        if stops:
            config["stopSequences"] = stops
    if request.n is not None and request.n != 1:
        config["candidateCount"] = request.n
    limit = request.max_completion_tokens or request.max_tokens
    if limit is not None:
        config["maxOutputTokens"] = limit
    for ours, theirs in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ):
        value = getattr(request, ours)
        if value is not None:
            config[theirs] = value
    extra = request.model_extra or {}
    if isinstance(extra.get("top_k"), int):  # vLLM-style extension some clients send
        config["topK"] = extra["top_k"]
    fmt = request.response_format
    if fmt is not None:
        kind = fmt.get("type")
        if kind in ("json_object", "json_schema"):
            config["responseMimeType"] = "application/json"
            spec = fmt.get("json_schema")
            schema = to_gemini_schema(spec.get("schema") if isinstance(spec, dict) else None)
            if schema:
                config["responseSchema"] = schema
        elif kind != "text":
            raise InvalidRequest(
                f"response_format type {kind!r} is not supported.",
                param="response_format.type",
                code="invalid_value",
            )
    effort = extra.get("reasoning_effort")
    if isinstance(effort, str) and effort in THINKING_BUDGETS:
        thinking = _thinking(model, effort)
        if thinking:
            config["thinkingConfig"] = thinking
    return config


def _thinking(model: str, effort: str) -> JSON | None:
    name = model.removeprefix("models/")
    if name.startswith(("gemini-1", "gemini-2.0")):
        return None  # no thinking controls before 2.5
    if name.startswith("gemini-2.5"):
        return {"thinkingBudget": THINKING_BUDGETS[effort]}
    level = "minimal" if effort == "none" else effort
    return {"thinkingLevel": level}
