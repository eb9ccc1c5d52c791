"""OpenAI chat-completions request → Anthropic Messages request, as pure functions.

:func:`build_request` turns one :class:`UpstreamCall` into a ``POST /v1/messages``
body plus the ``anthropic-beta`` values it asks for. The answer's way back (Message
and SSE events → OpenAI objects) is in :mod:`services.proxy.providers.anthropic`,
whose docstring lists every mapping decision that loses something.

Errors in the client's request that Anthropic cannot express are raised here as
:class:`shared.errors.InvalidRequest` naming the parameter, before any HTTP call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Literal

import orjson

from services.proxy.providers.base import UpstreamCall
from shared.errors import InvalidRequest
from shared.openai_chat import ChatCompletionRequest, ImagePart, Message, TextPart

Json = dict[str, Any]

# --- model profiles (data) ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """What we must know about a model family to build a valid request.

    ``default_max_tokens``: sent when the client gives no limit (Anthropic requires
    one). ``thinking``: how ``reasoning_effort`` is expressed (``none``: the model
    cannot think; ``budget``: ``thinking.type=enabled`` + ``budget_tokens``;
    ``adaptive``: ``thinking.type=adaptive`` + ``output_config.effort``).
    ``sampling``: whether ``temperature``/``top_p``/``top_k`` are accepted.
    ``max_output``: the model's output ceiling, bounding the raised default limit.
    """

    default_max_tokens: int
    thinking: Literal["none", "budget", "adaptive"]
    sampling: bool = True
    max_output: int = 64000


_BUDGET_32K = ModelProfile(16384, "budget", max_output=32000)
_BUDGET_64K = ModelProfile(16384, "budget")
_ADAPTIVE = ModelProfile(16384, "adaptive")

#: First matching glob wins. Newer, unlisted names get :data:`DEFAULT_PROFILE`.
MODEL_PROFILES: tuple[tuple[str, ModelProfile], ...] = (
    ("claude-3-5-*", ModelProfile(8192, "none", max_output=8192)),
    ("claude-3-7-*", _BUDGET_64K),
    ("claude-3-*", ModelProfile(4096, "none", max_output=4096)),
    ("claude-opus-4-0*", _BUDGET_32K),
    ("claude-opus-4-1*", _BUDGET_32K),
    ("claude-opus-4-2025*", _BUDGET_32K),
    ("claude-opus-4-5*", _BUDGET_64K),
    ("claude-sonnet-4-0*", _BUDGET_64K),
    ("claude-sonnet-4-2025*", _BUDGET_64K),
    ("claude-sonnet-4-5*", _BUDGET_64K),
    ("claude-haiku-4-5*", _BUDGET_64K),
    ("claude-opus-4-6*", _ADAPTIVE),
    ("claude-sonnet-4-6*", _ADAPTIVE),
)
#: Claude Opus 4.7 and later: adaptive thinking only, sampling parameters rejected.
DEFAULT_PROFILE = ModelProfile(16384, "adaptive", sampling=False)


def profile_for(model: str) -> ModelProfile:
    for pattern, profile in MODEL_PROFILES:
        if fnmatchcase(model, pattern):
            return profile
    return DEFAULT_PROFILE


#: ``reasoning_effort`` → ``budget_tokens`` (budget models; Anthropic's minimum is 1024).
THINKING_BUDGETS = {
    "minimal": 1024,
    "low": 2048,
    "medium": 8192,
    "high": 16384,
    "xhigh": 24576,
    "max": 24576,
}
#: ``reasoning_effort`` → ``output_config.effort`` (adaptive models).
ADAPTIVE_EFFORT = {
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "xhigh",
    "max": "max",
}
MIN_THINKING_BUDGET = 1024

#: Top-level Anthropic-native fields a client may send as extras and that we forward.
NATIVE_PASSTHROUGH = ("top_k", "thinking", "cache_control", "context_management", "inference_geo")
IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
SYSTEM_REMINDER = "<system-reminder>\n{}\n</system-reminder>"
JSON_OBJECT_INSTRUCTION = (
    "Respond with a single valid JSON object and nothing else: "
    "no prose and no Markdown code fences."
)
_BETA_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)((?:;[^,;]*)*);base64,", re.ASCII)

# --- request ---------------------------------------------------------------------------------


def build_request(call: UpstreamCall, *, stream: bool) -> tuple[Json, list[str]]:
    """The Messages body for ``call`` and the ``anthropic-beta`` values it needs."""
    request = call.request
    extra = request.model_extra or {}
    if request.n is not None and request.n > 1:
        raise InvalidRequest(
            "Anthropic models return one choice per request; 'n' must be 1.",
            param="n",
            code="unsupported_parameter",
        )
    system, messages = _conversation(request.messages)
    profile = profile_for(call.model)
    body: Json = {"model": call.model, "messages": messages}
    client_max = request.max_completion_tokens or request.max_tokens
    body["max_tokens"] = client_max or profile.default_max_tokens
    if stream:
        body["stream"] = True
    if request.stop is not None:
        stops = [request.stop] if isinstance(request.stop, str) else list(request.stop)
        if stops:
            body["stop_sequences"] = stops

    output_config: Json = {}
    native_output = extra.get("output_config")
    if isinstance(native_output, dict):
        output_config.update(native_output)
    _response_format(request.response_format, system, output_config)

    tools = _tools(request.tools)
    if tools:
        body["tools"] = tools
        choice = _tool_choice(request.tool_choice, extra.get("parallel_tool_calls"))
        if choice is not None:
            body["tool_choice"] = choice

    for name in NATIVE_PASSTHROUGH:
        if extra.get(name) is not None:
            body[name] = extra[name]
    thinking = "thinking" in body or _thinking(
        extra.get("reasoning_effort"), profile, client_max, body, output_config
    )
    _sampling(request, profile, thinking, body)
    if output_config:
        body["output_config"] = output_config
    if system:
        body["system"] = system
    user = request.user or extra.get("safety_identifier")
    if isinstance(user, str) and user:
        body["metadata"] = {"user_id": user}
    return body, _betas(extra.get("anthropic_beta"))


def _conversation(messages: list[Message]) -> tuple[list[Json], list[Json]]:
    """(top-level system blocks, alternating user/assistant turns)."""
    system: list[Json] = []
    turns: list[Json] = []
    for i, message in enumerate(messages):
        role = message.role
        where = f"messages[{i}]"
        if role in ("system", "developer"):
            blocks = _text_only(message.content, where)
            if blocks:
                _with_cache_control(blocks[-1], message)
            if not turns:
                system.extend(blocks)
            elif blocks:
                # Kept in place, as a user-turn reminder (the convention Claude models
                # know from Claude Code): moving it to the top would change its meaning
                # and bust the prompt cache; a trailing one still ends on a user turn.
                text = "\n\n".join(b["text"] for b in blocks)
                _append(turns, "user", [{"type": "text", "text": SYSTEM_REMINDER.format(text)}])
        elif role == "user":
            _append(turns, "user", _user_blocks(message.content, where, message))
        elif role == "assistant":
            _append(turns, "assistant", _assistant_blocks(message, where))
        elif role == "tool":
            _append(turns, "user", [_tool_result(message, where)])
        else:
            raise InvalidRequest(
                f"Role '{role}' is not supported for Anthropic models; use 'tool' messages.",
                param=f"{where}.role",
                code="unsupported_value",
            )
    for turn in turns:
        blocks = turn["content"]
        if turn["role"] == "user" and len(blocks) > 1:
            # Anthropic wants a turn's tool_result blocks before any other content.
            blocks.sort(key=lambda b: b.get("type") != "tool_result")
    if not turns:
        raise InvalidRequest(
            "Anthropic models need at least one non-system message with content.",
            param="messages",
            code="invalid_value",
        )
    return system, turns


def _append(turns: list[Json], role: str, blocks: list[Json]) -> None:
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": blocks})


def _with_cache_control(block: Json, source: Any) -> Json:
    extra = getattr(source, "model_extra", None)
    if extra and extra.get("cache_control") is not None:
        block["cache_control"] = extra["cache_control"]
    return block


def _text_only(content: str | list[Any] | None, where: str) -> list[Json]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for j, part in enumerate(content):
        if not isinstance(part, TextPart):
            raise InvalidRequest(
                "Only text content parts are allowed here.",
                param=f"{where}.content[{j}]",
                code="invalid_value",
            )
        if part.text:
            blocks.append(_with_cache_control({"type": "text", "text": part.text}, part))
    return blocks


def _user_blocks(content: str | list[Any] | None, where: str, message: Any) -> list[Json]:
    if content is None:
        return []
    if isinstance(content, str):
        blocks = [{"type": "text", "text": content}] if content else []
    else:
        blocks = []
        for j, part in enumerate(content):
            block = _part(part, f"{where}.content[{j}]")
            if block is not None:
                blocks.append(block)
    if blocks:
        _with_cache_control(blocks[-1], message)
    return blocks


def _part(part: Any, where: str) -> Json | None:
    if isinstance(part, TextPart):
        return _with_cache_control({"type": "text", "text": part.text}, part) if part.text else None
    if isinstance(part, ImagePart):
        return _with_cache_control({"type": "image", "source": _image_source(part, where)}, part)
    kind = getattr(part, "type", None)
    extra = getattr(part, "model_extra", None) or {}
    if kind == "refusal" and isinstance(extra.get("refusal"), str):
        return {"type": "text", "text": extra["refusal"]} if extra["refusal"] else None
    if kind == "file" and isinstance(extra.get("file"), dict):
        data = extra["file"].get("file_data")
        if isinstance(data, str):
            media_type, payload = _data_url(data, f"{where}.file.file_data")
            if media_type == "application/pdf":
                source = {"type": "base64", "media_type": media_type, "data": payload}
                return _with_cache_control({"type": "document", "source": source}, part)
    raise InvalidRequest(
        f"Content part type '{kind}' is not supported for Anthropic models "
        "(text, image_url and PDF file_data are).",
        param=where,
        code="unsupported_value",
    )


def _image_source(part: ImagePart, where: str) -> Json:
    url = part.image_url.url
    if url.startswith("data:"):
        media_type, payload = _data_url(url, f"{where}.image_url.url")
        if media_type not in IMAGE_MEDIA_TYPES:
            raise InvalidRequest(
                f"Image type '{media_type}' is not supported by Anthropic "
                "(image/jpeg, image/png, image/gif, image/webp are).",
                param=f"{where}.image_url.url",
                code="invalid_value",
            )
        return {"type": "base64", "media_type": media_type, "data": payload}
    if url.startswith(("https://", "http://")):
        return {"type": "url", "url": url}
    raise InvalidRequest(
        "An image URL must be an http(s) URL or a base64 data URL.",
        param=f"{where}.image_url.url",
        code="invalid_value",
    )


def _data_url(url: str, where: str) -> tuple[str, str]:
    # The payload itself is not decoded here (that would cost a pass over megabytes);
    # Anthropic rejects bad base64 with a 400 the client sees.
    match = _DATA_URL.match(url)
    payload = url[match.end() :] if match else ""
    if match is None or not payload:
        raise InvalidRequest(
            "Expected a base64 data URL (data:<media type>;base64,<data>).",
            param=where,
            code="invalid_value",
        )
    return match.group(1).lower(), payload


def _assistant_blocks(message: Message, where: str) -> list[Json]:
    extra = message.model_extra or {}
    blocks: list[Json] = []
    # Signed thinking blocks from an earlier answer go back first, as Anthropic
    # requires when thinking and tool use are combined.
    thinking_blocks = extra.get("thinking_blocks")
    if isinstance(thinking_blocks, list):
        blocks.extend(
            b
            for b in thinking_blocks
            if isinstance(b, dict) and b.get("type") in ("thinking", "redacted_thinking")
        )
    content = message.content
    if isinstance(content, str):
        if content:
            blocks.append({"type": "text", "text": content})
    elif content is not None:
        for j, part in enumerate(content):
            block = _part(part, f"{where}.content[{j}]")
            if block is not None:
                blocks.append(block)
    for k, call in enumerate(message.tool_calls or ()):
        arguments = call.function.arguments.strip()
        try:
            parsed = orjson.loads(arguments) if arguments else {}
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise InvalidRequest(
                "Tool call arguments must be a JSON object for Anthropic models.",
                param=f"{where}.tool_calls[{k}].function.arguments",
                code="invalid_value",
            )
        blocks.append(
            {"type": "tool_use", "id": call.id, "name": call.function.name, "input": parsed}
        )
    return blocks


def _tool_result(message: Message, where: str) -> Json:
    if not message.tool_call_id:
        raise InvalidRequest(
            "A 'tool' message needs the 'tool_call_id' it answers.",
            param=f"{where}.tool_call_id",
            code="missing_required_parameter",
        )
    block: Json = {"type": "tool_result", "tool_use_id": message.tool_call_id}
    content = message.content
    if isinstance(content, str):
        if content:
            block["content"] = content
    elif content:
        parts = [_part(part, f"{where}.content[{j}]") for j, part in enumerate(content)]
        kept = [p for p in parts if p is not None]
        if kept:
            block["content"] = kept
    # claude-code puts its conversation cache breakpoint on the last tool result.
    return _with_cache_control(block, message)


def _tools(tools: list[Json] | None) -> list[Json]:
    out: list[Json] = []
    for i, tool in enumerate(tools or ()):
        if tool.get("type", "function") != "function":
            # Anthropic-native definitions (server tools such as web search) pass as given.
            out.append(tool)
            continue
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequest(
                "A function tool needs 'function.name'.",
                param=f"tools[{i}].function",
                code="invalid_value",
            )
        parameters = function.get("parameters")
        entry: Json = {
            "name": function["name"],
            "input_schema": parameters
            if isinstance(parameters, dict)
            else {"type": "object", "properties": {}},
        }
        if function.get("description"):
            entry["description"] = function["description"]
        if function.get("strict") is True:
            entry["strict"] = True
        if tool.get("cache_control") is not None:
            entry["cache_control"] = tool["cache_control"]
        out.append(entry)
    return out


def _tool_choice(choice: str | Json | None, parallel: Any) -> Json | None:
    mapped: Json | None
    if choice is None or choice == "auto":
        mapped = {"type": "auto"} if parallel is False else None
    elif choice == "required":
        mapped = {"type": "any"}
    elif choice == "none":
        return {"type": "none"}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            raise InvalidRequest(
                "tool_choice needs 'function.name'.",
                param="tool_choice",
                code="invalid_value",
            )
        mapped = {"type": "tool", "name": name}
    elif isinstance(choice, dict) and choice.get("type") in ("auto", "any", "tool", "none"):
        mapped = dict(choice)  # already Anthropic-shaped
    else:
        raise InvalidRequest(
            "tool_choice must be 'auto', 'none', 'required' or a named function.",
            param="tool_choice",
            code="invalid_value",
        )
    if mapped is not None and parallel is False and mapped["type"] != "none":
        mapped["disable_parallel_tool_use"] = True
    return mapped


def _response_format(fmt: Json | None, system: list[Json], output_config: Json) -> None:
    kind = fmt.get("type") if fmt else None
    if kind is None or kind == "text":
        return
    if kind == "json_schema":
        spec = fmt.get("json_schema") if fmt else None
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidRequest(
                "response_format json_schema needs 'json_schema.schema'.",
                param="response_format.json_schema.schema",
                code="invalid_value",
            )
        output_config["format"] = {"type": "json_schema", "schema": schema}
    elif kind == "json_object":
        # No schema-less JSON mode exists on the Messages API: instruct instead.
        system.append({"type": "text", "text": JSON_OBJECT_INSTRUCTION})
    else:
        raise InvalidRequest(
            f"response_format type '{kind}' is not supported for Anthropic models.",
            param="response_format.type",
            code="invalid_value",
        )


def _thinking(
    effort: Any,
    profile: ModelProfile,
    client_max: int | None,
    body: Json,
    output_config: Json,
) -> bool:
    """Apply ``reasoning_effort``; True when thinking got switched on."""
    if not isinstance(effort, str) or effort == "none" or profile.thinking == "none":
        return False
    # Anthropic refuses thinking together with a forced tool call: the tool wins.
    if body.get("tool_choice", {}).get("type") in ("any", "tool"):
        return False
    if profile.thinking == "adaptive":
        body["thinking"] = {"type": "adaptive"}
        output_config.setdefault("effort", ADAPTIVE_EFFORT.get(effort, "high"))
        return True
    budget = THINKING_BUDGETS.get(effort, THINKING_BUDGETS["medium"])
    if client_max is not None:
        # OpenAI's limit covers reasoning and answer alike; so does ours.
        if client_max <= MIN_THINKING_BUDGET:
            return False
        budget = min(budget, client_max - 1)
    else:
        body["max_tokens"] = min(budget + profile.default_max_tokens, profile.max_output)
    body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    return True


def _sampling(
    request: ChatCompletionRequest, profile: ModelProfile, thinking: bool, body: Json
) -> None:
    if not profile.sampling:
        body.pop("top_k", None)
        return
    if thinking:
        # Thinking rejects temperature and top_k; top_p only within [0.95, 1].
        body.pop("top_k", None)
        if request.top_p is not None and request.top_p >= 0.95:
            body["top_p"] = request.top_p
        return
    if request.temperature is not None:
        # OpenAI's range is 0..2, Anthropic's 0..1.
        body["temperature"] = min(request.temperature, 1.0)
    elif request.top_p is not None:
        # Recent models reject temperature and top_p together; temperature wins.
        body["top_p"] = request.top_p


def _betas(raw: Any) -> list[str]:
    values = raw.split(",") if isinstance(raw, str) else raw if isinstance(raw, list) else []
    betas = []
    for value in values:
        token = value.strip() if isinstance(value, str) else ""
        if not _BETA_TOKEN.match(token):
            # A header value: nothing but a plain token may get through.
            raise InvalidRequest(
                "anthropic_beta values must be plain beta names.",
                param="anthropic_beta",
                code="invalid_value",
            )
        if token not in betas:
            betas.append(token)
    return betas
