"""A local Anthropic Messages API server (aiohttp) for tests and benchmarks.

Speaks the wire format where it matters: ``POST /v1/messages`` answering a Message
JSON or an SSE stream framed exactly as the API does (``event: <type>\\ndata:
<compact json>\\n\\n``; ``message_start``, ``content_block_start``, a ``ping`` after the
first block start, ``content_block_delta`` with ``text_delta`` / ``input_json_delta``
/ ``thinking_delta`` / ``signature_delta``, ``content_block_stop``, ``message_delta``
with the stop reason and cumulative ``output_tokens``, ``message_stop``; ``error``
events), and Anthropic error bodies ``{"type": "error", "error": {"type", "message"},
"request_id"}`` with a ``request-id`` header.

Requests are validated the way the real API does, and on purpose a little more
strictly where the API has relaxed over time, so the adapter never depends on
leniency: ``x-api-key`` (or ``Authorization: Bearer``) → 401; ``anthropic-version``
required; ``model``/``messages``/``max_tokens`` required; unknown top-level fields
and unknown block fields rejected (``Extra inputs are not permitted``); roles only
``user``/``assistant``, first turn ``user``, strict alternation (no consecutive
same-role turns); non-empty text blocks; image sources (``base64`` with
jpeg/png/gif/webp, or ``url``); every ``tool_result`` answering a ``tool_use`` of the
previous assistant turn and placed before other blocks, every ``tool_use`` answered
in the next turn; ``tool_choice`` only with ``tools``; ``temperature``/``top_p`` in
0..1; ``thinking`` budgets ≥ 1024 and below ``max_tokens``, and thinking refused with
``temperature`` ≠ 1, ``top_k`` or a forced tool choice.

Behaviour per model name: a :class:`Script` registered with
:meth:`FakeAnthropic.script` (or ``POST /_control/script`` with the same fields plus
``model``), else a preset (:data:`PRESETS`: ``fake-tools``, ``fake-thinking``,
``fake-cache``, ``fake-429``, ``fake-500``, ``fake-529``, ``fake-400``, ``fake-cut``,
``fake-stream-error``, ``fake-no-usage``, ``fake-slow``), else a plain text reply.
Requests are kept in :attr:`FakeAnthropic.requests` (also ``GET /_control/requests``);
client disconnects in :attr:`FakeAnthropic.disconnects`.

Standalone::

    python -m tests.fakes.anthropic_upstream --port 9001 [--api-key sk-ant-fake]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import time
import uuid
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.base import RECORD_LIMIT, FakeServer

DEFAULT_TEXT = "Hello! How can I help you today?"
VERSIONS = frozenset({"2023-01-01", "2023-06-01"})
SIGNATURE = "EqQBCkYIBhgCKkDfakeSignature0123456789abcdef=="

TOP_LEVEL = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "stream",
        "stop_sequences",
        "temperature",
        "top_p",
        "top_k",
        "tools",
        "tool_choice",
        "thinking",
        "metadata",
        "output_config",
        "service_tier",
        "cache_control",
        "container",
        "context_management",
        "inference_geo",
        "mcp_servers",
    }
)
BLOCK_FIELDS = {
    "text": {"type", "text", "cache_control", "citations"},
    "image": {"type", "source", "cache_control"},
    "document": {"type", "source", "cache_control", "title", "context", "citations"},
    "tool_use": {"type", "id", "name", "input", "cache_control"},
    "tool_result": {"type", "tool_use_id", "content", "is_error", "cache_control"},
    "thinking": {"type", "thinking", "signature"},
    "redacted_thinking": {"type", "data"},
}
USER_BLOCKS = frozenset({"text", "image", "document", "tool_result"})
ASSISTANT_BLOCKS = frozenset({"text", "tool_use", "thinking", "redacted_thinking"})
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")


@dataclass
class Script:
    """How the fake answers one model. Delays are seconds."""

    text: str = DEFAULT_TEXT
    # (tool name, JSON input) per tool_use block; with tools, ``text`` is not sent
    # unless ``preface`` is given (text before the tool calls, as Claude often does).
    tool_calls: list[tuple[str, str]] = field(default_factory=list)
    preface: str = ""
    # Thinking text sent (with a signature) before the answer.
    thinking: str = ""
    stop_reason: str | None = None
    status: int = 200
    error_type: str = "api_error"
    error_message: str = "Internal server error"
    retry_after: str | None = None
    first_byte_delay: float = 0.0
    chunk_delay: float = 0.0
    words_per_chunk: int = 1
    # Streams: drop the connection after this many content deltas (no message_stop).
    cut_after: int | None = None
    # Streams: send an ``error`` event (error_type/error_message) after this many deltas.
    error_after: int | None = None
    usage: bool = True
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    # When set, usage carries output_tokens_details.thinking_tokens.
    thinking_tokens: int | None = None


PRESETS: dict[str, Script] = {
    "fake-tools": Script(tool_calls=[("get_weather", '{"city": "Paris", "unit": "celsius"}')]),
    "fake-thinking": Script(
        thinking="The user greets me. I should greet back.",
        text="Hello there!",
        thinking_tokens=12,
    ),
    "fake-cache": Script(cache_read_tokens=1800, cache_creation_tokens=200),
    "fake-429": Script(
        status=429,
        error_type="rate_limit_error",
        error_message="Number of request tokens has exceeded your per-minute rate limit",
        retry_after="7",
    ),
    "fake-500": Script(status=500),
    "fake-529": Script(status=529, error_type="overloaded_error", error_message="Overloaded"),
    "fake-400": Script(
        status=400,
        error_type="invalid_request_error",
        error_message="prompt is too long: 215000 tokens > 200000 maximum",
    ),
    "fake-slow": Script(first_byte_delay=2.0, chunk_delay=0.2),
    "fake-cut": Script(text="one two three four five six", cut_after=3),
    "fake-stream-error": Script(
        text="one two three four",
        error_after=2,
        error_type="overloaded_error",
        error_message="Overloaded",
    ),
    "fake-no-usage": Script(usage=False),
}


class Invalid(Exception):
    """A request the real API would answer with 400 invalid_request_error."""


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    status: int
    at: float


def _tokens(text: str) -> int:
    return max(1, len(text) // 4) if text else 0


def _request_id() -> str:
    return "req_" + uuid.uuid4().hex[:24]


def error_response(
    status: int, type_: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    request_id = _request_id()
    body = {"type": "error", "error": {"type": type_, "message": message}}
    body["request_id"] = request_id
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers={"request-id": request_id, **(headers or {})},
    )


# --- validation --------------------------------------------------------------------------


def _extra_fields(where: str, doc: dict[str, Any], allowed: set[str] | frozenset[str]) -> None:
    for key in doc:
        if key not in allowed:
            raise Invalid(f"{where}{key}: Extra inputs are not permitted")


def validate(body: Any) -> None:
    if not isinstance(body, dict):
        raise Invalid("Input should be a valid dictionary")
    for required in ("model", "messages", "max_tokens"):
        if required not in body:
            raise Invalid(f"{required}: Field required")
    _extra_fields("", body, TOP_LEVEL)
    if not isinstance(body["model"], str) or not body["model"]:
        raise Invalid("model: Input should be a valid string")
    max_tokens = body["max_tokens"]
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise Invalid("max_tokens: Input should be greater than or equal to 1")
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and not (isinstance(value, int | float) and 0 <= value <= 1):
            raise Invalid(f"{name}: Input should be less than or equal to 1")
    stops = body.get("stop_sequences")
    if stops is not None and not (
        isinstance(stops, list) and all(isinstance(s, str) and s.strip() for s in stops)
    ):
        raise Invalid("stop_sequences: each stop sequence must be a non-empty string")
    _validate_system(body.get("system"))
    _validate_messages(body["messages"])
    _validate_tools(body)
    _validate_thinking(body)
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise Invalid("metadata: Input should be a valid dictionary")
        _extra_fields("metadata.", metadata, {"user_id"})
    output = body.get("output_config")
    if output is not None:
        if not isinstance(output, dict):
            raise Invalid("output_config: Input should be a valid dictionary")
        _extra_fields("output_config.", output, {"effort", "format"})
        fmt = output.get("format")
        if fmt is not None and not (
            isinstance(fmt, dict)
            and fmt.get("type") == "json_schema"
            and isinstance(fmt.get("schema"), dict)
        ):
            raise Invalid("output_config.format: expected {type: json_schema, schema: {...}}")
        if output.get("effort") not in (None, "low", "medium", "high", "xhigh", "max"):
            raise Invalid("output_config.effort: Input should be 'low', 'medium' or 'high'")


def _validate_system(system: Any) -> None:
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list):
        raise Invalid("system: Input should be a valid string or list")
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise Invalid(f"system.{i}.type: Input should be 'text'")
        _extra_fields(f"system.{i}.", block, BLOCK_FIELDS["text"])
        if not isinstance(block.get("text"), str) or not block["text"]:
            raise Invalid("system: text content blocks must be non-empty")


def _validate_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise Invalid("messages: at least one message is required")
    previous_tool_ids: set[str] = set()
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise Invalid(f"messages.{i}: Input should be a valid dictionary")
        _extra_fields(f"messages.{i}.", message, {"role", "content"})
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise Invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if i == 0 and role != "user":
            raise Invalid('messages: first message must use the "user" role')
        if i and messages[i - 1].get("role") == role:
            raise Invalid(
                f'messages: roles must alternate between "user" and "assistant", '
                f'but found multiple "{role}" roles in a row'
            )
        content = message.get("content")
        if isinstance(content, str):
            if not content:
                raise Invalid(f"messages.{i}: text content blocks must be non-empty")
            blocks: list[Any] = [{"type": "text", "text": content}]
        elif isinstance(content, list) and content:
            blocks = content
        else:
            raise Invalid(f"messages.{i}.content: Input should be a non-empty string or list")
        tool_ids = _validate_blocks(i, role, blocks)
        if role == "user":
            answered = {b["tool_use_id"] for b in blocks if b.get("type") == "tool_result"}
            unexpected = answered - previous_tool_ids
            if unexpected:
                raise Invalid(
                    f"messages.{i}.content: unexpected `tool_use_id` found in `tool_result` "
                    f"blocks: {sorted(unexpected)[0]}. Each `tool_result` block must have a "
                    "corresponding `tool_use` block in the previous message."
                )
            missing = previous_tool_ids - answered
            if missing:
                raise Invalid(
                    f"messages.{i}: `tool_use` ids were found without `tool_result` blocks "
                    f"immediately after: {sorted(missing)[0]}. Each `tool_use` block must have "
                    "a corresponding `tool_result` block in the next message."
                )
        previous_tool_ids = tool_ids


def _validate_blocks(i: int, role: str, blocks: list[Any]) -> set[str]:
    allowed = USER_BLOCKS if role == "user" else ASSISTANT_BLOCKS
    tool_ids: set[str] = set()
    seen_other = False
    for j, block in enumerate(blocks):
        where = f"messages.{i}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind not in BLOCK_FIELDS or kind not in allowed:
            raise Invalid(f"{where}.type: unexpected block type {kind!r} in a {role} message")
        _extra_fields(f"{where}.", block, BLOCK_FIELDS[kind])
        if kind == "text" and (not isinstance(block.get("text"), str) or not block["text"]):
            raise Invalid(f"messages.{i}: text content blocks must be non-empty")
        if kind == "image":
            _validate_image(where, block.get("source"))
        if kind == "tool_use":
            if not isinstance(block.get("input"), dict):
                raise Invalid(f"{where}.input: Input should be a valid dictionary")
            if not isinstance(block.get("id"), str) or not TOOL_NAME.match(block.get("name", "")):
                raise Invalid(f"{where}: tool_use blocks need an id and a valid name")
            tool_ids.add(block["id"])
        if kind == "tool_result":
            if seen_other:
                raise Invalid(
                    f"messages.{i}: `tool_result` blocks must come before any other content"
                )
            _validate_tool_result(where, block)
        else:
            seen_other = True
    return tool_ids


def _validate_image(where: str, source: Any) -> None:
    if not isinstance(source, dict):
        raise Invalid(f"{where}.source: Field required")
    if source.get("type") == "base64":
        _extra_fields(f"{where}.source.", source, {"type", "media_type", "data"})
        if source.get("media_type") not in IMAGE_TYPES:
            raise Invalid(
                f"{where}.source.base64.media_type: Input should be 'image/jpeg', "
                "'image/png', 'image/gif' or 'image/webp'"
            )
        if not isinstance(source.get("data"), str) or not source["data"]:
            raise Invalid(f"{where}.source.base64.data: Field required")
    elif source.get("type") == "url":
        _extra_fields(f"{where}.source.", source, {"type", "url"})
        if not str(source.get("url", "")).startswith(("https://", "http://")):
            raise Invalid(f"{where}.source.url.url: Input should be a valid URL")
    else:
        raise Invalid(f"{where}.source.type: Input should be 'base64', 'url' or 'file'")


def _validate_tool_result(where: str, block: dict[str, Any]) -> None:
    if not isinstance(block.get("tool_use_id"), str):
        raise Invalid(f"{where}.tool_use_id: Field required")
    content = block.get("content")
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise Invalid(f"{where}.content: Input should be a valid string or list")
    for k, inner in enumerate(content):
        kind = inner.get("type") if isinstance(inner, dict) else None
        if kind not in ("text", "image"):
            raise Invalid(f"{where}.content.{k}.type: Input should be 'text' or 'image'")
        _extra_fields(f"{where}.content.{k}.", inner, BLOCK_FIELDS[kind])
        if kind == "image":
            _validate_image(f"{where}.content.{k}", inner.get("source"))


def _validate_tools(body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise Invalid("tools: Input should be a valid list")
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise Invalid(f"tools.{i}: Input should be a valid dictionary")
            if tool.get("type", "custom") != "custom":
                continue  # server tools (web_search_…) have their own shapes
            allowed = {"type", "name", "description", "input_schema", "cache_control", "strict"}
            _extra_fields(f"tools.{i}.custom.", tool, allowed)
            if not TOOL_NAME.match(str(tool.get("name", ""))):
                raise Invalid(f"tools.{i}.custom.name: String should match pattern")
            schema = tool.get("input_schema")
            if not isinstance(schema, dict) or schema.get("type") != "object":
                raise Invalid(f"tools.{i}.custom.input_schema.type: Input should be 'object'")
    choice = body.get("tool_choice")
    if choice is None:
        return
    if not tools:
        raise Invalid("tool_choice: tool_choice may only be specified while providing tools.")
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind not in ("auto", "any", "tool", "none"):
        raise Invalid("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
    allowed_choice = {"type", "disable_parallel_tool_use"} | ({"name"} if kind == "tool" else set())
    _extra_fields(f"tool_choice.{kind}.", choice, allowed_choice)
    if kind == "tool" and not isinstance(choice.get("name"), str):
        raise Invalid("tool_choice.tool.name: Field required")


def _validate_thinking(body: dict[str, Any]) -> None:
    thinking = body.get("thinking")
    if thinking is None:
        return
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind == "disabled":
        return
    if kind == "enabled":
        _extra_fields("thinking.enabled.", thinking, {"type", "budget_tokens", "display"})
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024:
            raise Invalid(
                "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
            )
        if budget >= body["max_tokens"]:
            raise Invalid("`max_tokens` must be greater than `thinking.budget_tokens`.")
    elif kind == "adaptive":
        _extra_fields("thinking.adaptive.", thinking, {"type", "display"})
    else:
        raise Invalid("thinking.type: Input should be 'enabled', 'disabled' or 'adaptive'")
    if body.get("temperature") not in (None, 1, 1.0):
        raise Invalid(
            "`temperature` may only be set to 1 when thinking is enabled. "
            "Please consult our documentation."
        )
    if body.get("top_k") is not None:
        raise Invalid("`top_k` must be unset when thinking is enabled.")
    top_p = body.get("top_p")
    if top_p is not None and top_p < 0.95:
        raise Invalid("`top_p` must be between 0.95 and 1 when thinking is enabled.")
    choice = body.get("tool_choice") or {}
    if choice.get("type") in ("any", "tool"):
        raise Invalid("Thinking may not be enabled when tool_choice forces tool use.")


# --- the server --------------------------------------------------------------------------


class FakeAnthropic(FakeServer[Script]):
    # Like ANTHROPIC_BASE_URL: no /v1 (the SDK adds /v1/messages).
    def __init__(
        self, api_key: str | None = "sk-ant-fake", record_limit: int = RECORD_LIMIT
    ) -> None:
        super().__init__(api_key, presets=PRESETS, default=Script, record_limit=record_limit)
        self.app.router.add_post("/v1/messages", self._messages)
        self.app.router.add_get("/v1/models", self._models)
        self.app.router.add_post("/_control/script", self._control_script)
        self.app.router.add_get("/_control/requests", self._control_requests)
        self.app.router.add_post("/_control/reset", self._control_reset)

    # --- the API ------------------------------------------------------------------------

    def _auth_error(self, request: web.Request) -> web.Response | None:
        if self.api_key is None:
            return None
        key = request.headers.get("x-api-key")
        bearer = request.headers.get("Authorization", "")
        if key is None and not bearer:
            return error_response(401, "authentication_error", "x-api-key header is required")
        if key == self.api_key or bearer == f"Bearer {self.api_key}":
            return None
        return error_response(401, "authentication_error", "invalid x-api-key")

    def _header_error(self, request: web.Request) -> web.Response | None:
        version = request.headers.get("anthropic-version")
        if version is None:
            return error_response(
                400, "invalid_request_error", "anthropic-version: header is required"
            )
        if version not in VERSIONS:
            return error_response(
                400, "invalid_request_error", f"anthropic-version: invalid version '{version}'"
            )
        return None

    async def _models(self, request: web.Request) -> web.Response:
        failure = self._auth_error(request) or self._header_error(request)
        if failure is not None:
            return failure
        model = {
            "type": "model",
            "id": "claude-sonnet-4-5-20250929",
            "display_name": "Claude Sonnet 4.5",
            "created_at": "2025-09-29T00:00:00Z",
        }
        doc = {"data": [model], "has_more": False, "first_id": model["id"], "last_id": model["id"]}
        return web.Response(body=orjson.dumps(doc), content_type="application/json")

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        response = self._auth_error(request) or self._header_error(request)
        if response is None:
            if request.content_type != "application/json" or body is None:
                response = error_response(
                    400, "invalid_request_error", "Request body must be valid JSON"
                )
            else:
                try:
                    validate(body)
                except Invalid as exc:
                    response = error_response(400, "invalid_request_error", str(exc))
        model = body.get("model", "") if isinstance(body, dict) else ""
        script = self._script_for(str(model), body)
        if response is None and script.status >= 400:
            headers = {"retry-after": script.retry_after} if script.retry_after else None
            response = error_response(
                script.status, script.error_type, script.error_message, headers
            )
        self.requests.append(
            RecordedRequest(
                path=request.path_qs,
                headers=dict(request.headers),
                body=body if isinstance(body, dict) else {},
                status=response.status if response is not None else 200,
                at=time.time(),
            )
        )
        if response is not None:
            return response
        if script.first_byte_delay:
            await asyncio.sleep(script.first_byte_delay)
        input_tokens = _tokens(
            orjson.dumps([body.get("system"), body["messages"], body.get("tools")]).decode()
        )
        if body.get("stream"):
            return await self._stream(request, str(model), script, input_tokens)
        return web.Response(
            body=orjson.dumps(self._message(str(model), script, input_tokens)),
            content_type="application/json",
            headers={"request-id": _request_id()},
        )

    # --- answers ------------------------------------------------------------------------

    def _usage(self, script: Script, input_tokens: int, output_tokens: int) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "input_tokens": input_tokens,
            "cache_creation_input_tokens": script.cache_creation_tokens,
            "cache_read_input_tokens": script.cache_read_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": script.cache_creation_tokens,
                "ephemeral_1h_input_tokens": 0,
            },
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }
        if script.thinking_tokens is not None:
            usage["output_tokens_details"] = {"thinking_tokens": script.thinking_tokens}
        return usage

    def _blocks(self, script: Script) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        if script.thinking:
            blocks.append({"type": "thinking", "thinking": script.thinking, "signature": SIGNATURE})
        if script.tool_calls:
            if script.preface:
                blocks.append({"type": "text", "text": script.preface})
            for i, (name, arguments) in enumerate(script.tool_calls):
                tool_id = f"toolu_{i:02d}{uuid.uuid4().hex[:20]}"
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": tool_id,
                        "name": name,
                        "input": orjson.loads(arguments),
                    }
                )
        else:
            blocks.append({"type": "text", "text": script.text})
        return blocks

    def _stop_reason(self, script: Script) -> str:
        return script.stop_reason or ("tool_use" if script.tool_calls else "end_turn")

    def _output_tokens(self, script: Script) -> int:
        text = script.thinking + script.preface
        text += "".join(n + a for n, a in script.tool_calls) if script.tool_calls else script.text
        return _tokens(text)

    def _message(self, model: str, script: Script, input_tokens: int) -> dict[str, Any]:
        message: dict[str, Any] = {
            "id": "msg_" + uuid.uuid4().hex[:24],
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": self._blocks(script),
            "stop_reason": self._stop_reason(script),
            "stop_sequence": None,
        }
        if script.usage:
            message["usage"] = self._usage(script, input_tokens, self._output_tokens(script))
        return message

    def _events(self, script: Script) -> list[tuple[str, dict[str, Any], bool]]:
        """(event type, data, counts as a content delta) for the content blocks."""
        out: list[tuple[str, dict[str, Any], bool]] = []
        per = max(1, script.words_per_chunk)
        for index, block in enumerate(self._blocks(script)):
            kind = block["type"]
            start: dict[str, Any]
            if kind == "thinking":
                start = {"type": "thinking", "thinking": "", "signature": ""}
            elif kind == "tool_use":
                start = {**block, "input": {}}
            else:
                start = {"type": "text", "text": ""}
            out.append(("content_block_start", {"index": index, "content_block": start}, False))
            if index == 0:
                out.append(("ping", {}, False))
            if kind == "tool_use":
                arguments = orjson.dumps(block["input"]).decode()
                step = max(1, len(arguments) // 3)
                pieces = [""] + [arguments[s : s + step] for s in range(0, len(arguments), step)]
                deltas = [{"type": "input_json_delta", "partial_json": p} for p in pieces]
            else:
                field_name = "thinking" if kind == "thinking" else "text"
                words = block[field_name].split(" ")
                groups = [
                    ("" if i == 0 else " ") + " ".join(words[i : i + per])
                    for i in range(0, len(words), per)
                ]
                delta_type = "thinking_delta" if kind == "thinking" else "text_delta"
                deltas = [{"type": delta_type, field_name: g} for g in groups]
                if kind == "thinking":
                    deltas.append({"type": "signature_delta", "signature": SIGNATURE})
            for delta in deltas:
                counted = delta["type"] != "signature_delta"
                out.append(("content_block_delta", {"index": index, "delta": delta}, counted))
            out.append(("content_block_stop", {"index": index}, False))
        return out

    async def _stream(
        self, request: web.Request, model: str, script: Script, input_tokens: int
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "request-id": _request_id(),
            }
        )
        await response.prepare(request)

        async def send(kind: str, data: dict[str, Any]) -> None:
            if kind == "ping":
                payload = b'{"type": "ping"}'  # the API's own spacing
            else:
                payload = orjson.dumps({"type": kind, **data})
            await response.write(b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n")

        message = self._message(model, script, input_tokens)
        message["content"] = []
        message["stop_reason"] = None
        if script.usage:
            message["usage"]["output_tokens"] = 1
        try:
            await send("message_start", {"message": message})
            sent = 0
            for kind, data, counted in self._events(script):
                if counted and script.cut_after is not None and sent >= script.cut_after:
                    assert request.transport is not None
                    request.transport.close()  # no message_stop: a cut stream
                    return response
                if counted and script.error_after is not None and sent >= script.error_after:
                    error = {"type": script.error_type, "message": script.error_message}
                    await send("error", {"error": error})
                    return response
                await send(kind, data)
                if counted:
                    sent += 1
                    if script.chunk_delay:
                        await asyncio.sleep(script.chunk_delay)
            delta: dict[str, Any] = {
                "delta": {"stop_reason": self._stop_reason(script), "stop_sequence": None}
            }
            if script.usage:
                usage: dict[str, Any] = {"output_tokens": self._output_tokens(script)}
                if script.thinking_tokens is not None:
                    usage["output_tokens_details"] = {"thinking_tokens": script.thinking_tokens}
                delta["usage"] = usage
            await send("message_delta", delta)
            await send("message_stop", {})
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            self._hung_up(model)
            raise
        return response

    # --- control API --------------------------------------------------------------------

    async def _control_script(self, request: web.Request) -> web.Response:
        doc = await request.json()
        model = doc.pop("model")
        allowed = {f.name for f in fields(Script)}
        script = replace(Script(), **{k: v for k, v in doc.items() if k in allowed})
        script.tool_calls = [tuple(call) for call in script.tool_calls]  # type: ignore[misc]
        self.script(str(model), script)
        return web.json_response({"ok": True, "script": asdict(script)})

    async def _control_requests(self, request: web.Request) -> web.Response:
        return web.Response(
            body=orjson.dumps([asdict(r) for r in self.requests]), content_type="application/json"
        )

    async def _control_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})


async def _serve(host: str, port: int, api_key: str | None) -> None:
    fake = FakeAnthropic(api_key=api_key)
    url = await fake.start(host, port)
    print(f"fake Anthropic upstream on {url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--api-key", default="sk-ant-fake", help="expected x-api-key")
    parser.add_argument("--no-auth", action="store_true", help="accept any or no key")
    args = parser.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.host, args.port, None if args.no_auth else args.api_key))


if __name__ == "__main__":
    main()
