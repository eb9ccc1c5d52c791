"""Cohere v2 Chat: building the request from the OpenAI chat shape (no I/O).

The mapping decisions are listed in :mod:`services.proxy.providers.cohere`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from services.proxy.providers.base import UpstreamCall
from shared.errors import InvalidRequest
from shared.openai_chat import ChatCompletionRequest, ImagePart, Message, TextPart

# Cohere's documented ranges (v2 chat reference): p in [0.01, 0.99], penalties in [0, 1].
P_MIN, P_MAX = 0.01, 0.99


def _text(message: Message, index: int) -> str:
    """A message's content as plain text (system, assistant and tool turns)."""
    content = message.content
    if content is None or isinstance(content, str):
        return content or ""
    pieces: list[str] = []
    for part in content:
        if isinstance(part, TextPart):
            pieces.append(part.text)
        elif part.type == "refusal" and isinstance(refusal := getattr(part, "refusal", None), str):
            pieces.append(refusal)
        else:
            raise InvalidRequest(
                f"Content parts of type '{part.type}' are not supported in "
                f"'{message.role}' messages by the Cohere provider.",
                param=f"messages[{index}].content",
                code="unsupported_content",
            )
    return "".join(pieces)


def _user_content(message: Message, index: int) -> str | list[dict[str, Any]]:
    content = message.content
    if content is None or isinstance(content, str):
        return content or ""
    parts: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, TextPart):
            parts.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            # Cohere takes a web URL or a base64 data URI in the same field (ImageUrl.url).
            image: dict[str, Any] = {"url": part.image_url.url}
            if part.image_url.detail:
                image["detail"] = part.image_url.detail
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise InvalidRequest(
                f"Content parts of type '{part.type}' are not supported by the Cohere provider.",
                param=f"messages[{index}].content",
                code="unsupported_content",
            )
    return parts


def _messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role = message.role
        if role in {"system", "developer"}:
            out.append({"role": "system", "content": _text(message, i)})
        elif role == "user":
            out.append({"role": "user", "content": _user_content(message, i)})
        elif role == "assistant":
            text = _text(message, i)
            if message.tool_calls:
                turn: dict[str, Any] = {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": call.id,
                            "type": "function",
                            "function": {
                                "name": call.function.name,
                                "arguments": call.function.arguments,
                            },
                        }
                        for call in message.tool_calls
                    ],
                }
                if text:
                    turn["tool_plan"] = text
                out.append(turn)
            elif text:
                out.append({"role": "assistant", "content": text})
            # An empty assistant turn carries nothing and Cohere rejects empty content.
        elif role == "tool":
            if not message.tool_call_id:
                raise InvalidRequest(
                    "A 'tool' message needs a 'tool_call_id'.",
                    param=f"messages[{i}].tool_call_id",
                    code="missing_required_parameter",
                )
            out.append(
                {"role": "tool", "tool_call_id": message.tool_call_id, "content": _text(message, i)}
            )
        else:
            raise InvalidRequest(
                "The deprecated 'function' role is not supported by the Cohere provider; "
                "use 'tool' messages.",
                param=f"messages[{i}].role",
                code="unsupported_value",
            )
    return out


def _tools(request: ChatCompletionRequest) -> tuple[list[dict[str, Any]], str | None, bool]:
    """(tools, tool_choice, strict_tools) in Cohere's shape."""
    tools: list[dict[str, Any]] = []
    strict = False
    for i, tool in enumerate(request.tools or ()):
        function = tool.get("function")
        if tool.get("type", "function") != "function" or not isinstance(function, dict):
            raise InvalidRequest(
                "Only 'function' tools are supported by the Cohere provider.",
                param=f"tools[{i}]",
                code="unsupported_value",
            )
        spec: dict[str, Any] = {"name": function.get("name")}
        if function.get("description"):
            spec["description"] = function["description"]
        spec["parameters"] = function.get("parameters") or {"type": "object", "properties": {}}
        strict = strict or function.get("strict") is True
        tools.append({"type": "function", "function": spec})
    choice = request.tool_choice
    if not tools or choice is None or choice == "auto":
        return tools, None, strict
    if choice == "none":
        return tools, "NONE", strict
    if choice == "required":
        return tools, "REQUIRED", strict
    if isinstance(choice, dict) and choice.get("type") == "function":
        wanted = as_object(choice.get("function")).get("name")
        named = [t for t in tools if t["function"]["name"] == wanted]
        if named:
            # Cohere cannot force one named tool; forcing a call among just that one can.
            return named, "REQUIRED", strict
    raise InvalidRequest(
        f"Unsupported 'tool_choice' for the Cohere provider: {orjson.dumps(choice).decode()}.",
        param="tool_choice",
        code="unsupported_value",
    )


def _response_format(raw: dict[str, Any] | None) -> dict[str, Any] | None:
    if not raw or raw.get("type") == "text":
        return None
    if raw.get("type") == "json_object":
        return {"type": "json_object"}
    if raw.get("type") == "json_schema":
        spec = raw.get("json_schema") or {}
        out: dict[str, Any] = {"type": "json_object"}
        if isinstance(spec, dict) and isinstance(spec.get("schema"), dict):
            out["json_schema"] = spec["schema"]
        return out
    raise InvalidRequest(
        f"Unsupported 'response_format' type for the Cohere provider: {raw.get('type')!r}.",
        param="response_format.type",
        code="unsupported_value",
    )


def as_object(value: Any) -> dict[str, Any]:
    """``value`` when it is a JSON object, else an empty one (tolerant reading)."""
    return value if isinstance(value, dict) else {}


def _clamp(value: float, low: float, high: float) -> float:
    return min(high, max(low, value))


def to_cohere(call: UpstreamCall, stream: bool) -> dict[str, Any]:
    """The Cohere v2 chat body for one OpenAI-shaped call."""
    request = call.request
    if request.n is not None and request.n > 1:
        raise InvalidRequest(
            "The Cohere provider returns one choice per call; 'n' must be 1.",
            param="n",
            code="unsupported_value",
        )
    body: dict[str, Any] = {"model": call.model, "messages": _messages(request.messages)}
    tools, tool_choice, strict = _tools(request)
    if tools:
        body["tools"] = tools
        if strict:
            body["strict_tools"] = True
    if tool_choice is not None:
        body["tool_choice"] = tool_choice
    response_format = _response_format(request.response_format)
    if response_format is not None:
        body["response_format"] = response_format
    limit = request.max_completion_tokens or request.max_tokens
    if limit is not None:
        body["max_tokens"] = limit
    if request.stop is not None:
        body["stop_sequences"] = [request.stop] if isinstance(request.stop, str) else request.stop
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["p"] = _clamp(request.top_p, P_MIN, P_MAX)
    if request.seed is not None:
        body["seed"] = request.seed
    if request.frequency_penalty is not None:
        body["frequency_penalty"] = _clamp(request.frequency_penalty, 0.0, 1.0)
    if request.presence_penalty is not None:
        body["presence_penalty"] = _clamp(request.presence_penalty, 0.0, 1.0)
    if stream:
        body["stream"] = True
    return body
