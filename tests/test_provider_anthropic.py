"""The Anthropic Messages adapter: translation tables (request, answer, stream) and
end-to-end calls against the fake upstream (tests/fakes/anthropic_upstream.py), which
validates requests as strictly as the real API — so every conversation the tables
build is also sent to it and must be accepted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from fnmatch import fnmatchcase
from typing import Any

import aiohttp
import orjson
import pytest

from jetty_cli.procs import free_port
from services.proxy.accumulate import Accumulator
from services.proxy.providers import anthropic
from services.proxy.providers.anthropic import (
    AnthropicConfig,
    AnthropicProvider,
    StreamTranslator,
    from_env,
    response_from_message,
    usage_from,
)
from services.proxy.providers.anthropic_translate import (
    JSON_OBJECT_INSTRUCTION,
    build_request,
)
from services.proxy.providers.base import ChatChunk, UpstreamCall
from services.proxy.providers.openai_compat import Timeouts
from services.proxy.providers.sse import SSEDecoder
from shared.errors import ApiError, InvalidRequest, RateLimited, UpstreamError, UpstreamTimeout
from shared.openai_chat import parse_chat_request
from tests.fakes.anthropic_upstream import SIGNATURE, FakeAnthropic, Script

KEY = "sk-ant-api03-provider-key-0123456789abcdef"
MODEL = "claude-sonnet-4-5"
PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
WEATHER = {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}
TOOLS = [
    {"type": "function", "function": {**WEATHER, "description": "Weather in a city."}},
    {"type": "function", "function": {"name": "get_time"}},
]


def upstream_call(body: dict[str, Any], model: str | None = None) -> UpstreamCall:
    raw = orjson.dumps(body)
    request = parse_chat_request(raw)
    return UpstreamCall(model=model or request.model, request=request, body=raw)


def chat(model: str = MODEL, text: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def translate(body: dict[str, Any], stream: bool = False) -> dict[str, Any]:
    return build_request(upstream_call(body), stream=stream)[0]


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def reminder(value: str) -> dict[str, Any]:
    return text(f"<system-reminder>\n{value}\n</system-reminder>")


def tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


async def collect(stream: AsyncIterator[ChatChunk]) -> list[ChatChunk]:
    return [chunk async for chunk in stream]


def accumulate(chunks: list[ChatChunk]) -> Accumulator:
    acc = Accumulator()
    for chunk in chunks:
        acc.add_chunk(chunk)
    return acc


# --- request translation: conversations ----------------------------------------------------

CONVERSATIONS: list[
    tuple[str, list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]
] = [
    (
        "text with system",
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        [text("Be brief.")],
        [{"role": "user", "content": [text("Hi")]}],
    ),
    (
        "system and developer in the middle stay in place",
        [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric."}]},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "system", "content": "Now answer in French."},
            {"role": "user", "content": "Weather?"},
        ],
        [text("Be brief."), text("Use metric.")],
        [
            {"role": "user", "content": [text("Hi")]},
            {"role": "assistant", "content": [text("Hello!")]},
            {"role": "user", "content": [reminder("Now answer in French."), text("Weather?")]},
        ],
    ),
    (
        "trailing system message ends on a user turn",
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "developer", "content": "Wrap up."},
        ],
        [],
        [
            {"role": "user", "content": [text("Hi")]},
            {"role": "assistant", "content": [text("Hello!")]},
            {"role": "user", "content": [reminder("Wrap up.")]},
        ],
    ),
    (
        "consecutive same-role messages merge, empty ones vanish",
        [
            {"role": "user", "content": "one"},
            {"role": "user", "content": ""},
            {"role": "user", "content": [{"type": "text", "text": "two"}]},
            {"role": "assistant", "content": "three"},
            {"role": "assistant", "content": "four"},
            {"role": "user", "content": "five"},
        ],
        [],
        [
            {"role": "user", "content": [text("one"), text("two")]},
            {"role": "assistant", "content": [text("three"), text("four")]},
            {"role": "user", "content": [text("five")]},
        ],
    ),
    (
        "multi-turn tool calls and results",
        [
            {"role": "user", "content": "Weather in Paris and the time?"},
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    tool_call("toolu_a", "get_weather", '{"city": "Paris"}'),
                    tool_call("toolu_b", "get_time", ""),
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_a", "content": "18C, cloudy"},
            {
                "role": "tool",
                "tool_call_id": "toolu_b",
                "content": [{"type": "text", "text": "noon"}],
            },
            {"role": "user", "content": "Thanks!"},
            {"role": "assistant", "content": "You're welcome."},
            {"role": "user", "content": "Bye"},
        ],
        [],
        [
            {"role": "user", "content": [text("Weather in Paris and the time?")]},
            {
                "role": "assistant",
                "content": [
                    text("Checking."),
                    {
                        "type": "tool_use",
                        "id": "toolu_a",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    },
                    {"type": "tool_use", "id": "toolu_b", "name": "get_time", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_a", "content": "18C, cloudy"},
                    {"type": "tool_result", "tool_use_id": "toolu_b", "content": [text("noon")]},
                    text("Thanks!"),
                ],
            },
            {"role": "assistant", "content": [text("You're welcome.")]},
            {"role": "user", "content": [text("Bye")]},
        ],
    ),
    (
        "tool results move before a user message that came first",
        [
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [tool_call("toolu_c", "get_weather", "{}")],
            },
            {"role": "user", "content": "hurry"},
            {"role": "tool", "tool_call_id": "toolu_c", "content": ""},
        ],
        [],
        [
            {"role": "user", "content": [text("Weather?")]},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "toolu_c", "name": "get_weather", "input": {}}
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_c"}, text("hurry")],
            },
        ],
    ),
    (
        "images by URL and base64, PDF file, cache_control kept",
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare", "cache_control": {"type": "ephemeral"}},
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://example.com/a.jpg", "detail": "high"},
                    },
                    {"type": "image_url", "image_url": {"url": PNG}},
                    {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0x"}},
                ],
            }
        ],
        [],
        [
            {
                "role": "user",
                "content": [
                    {**text("Compare"), "cache_control": {"type": "ephemeral"}},
                    {
                        "type": "image",
                        "source": {"type": "url", "url": "https://example.com/a.jpg"},
                    },
                    {
                        "type": "image",
                        "source": {
                            "type": "base64",
                            "media_type": "image/png",
                            "data": PNG.split(",")[1],
                        },
                    },
                    {
                        "type": "document",
                        "source": {
                            "type": "base64",
                            "media_type": "application/pdf",
                            "data": "JVBERi0x",
                        },
                    },
                ],
            }
        ],
    ),
    (
        "tool result with an image, signed thinking replayed",
        [
            {"role": "user", "content": "Screenshot please"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [tool_call("toolu_d", "screenshot", "{}")],
                "reasoning_content": "I need a screenshot.",
                "thinking_blocks": [
                    {"type": "thinking", "thinking": "I need a screenshot.", "signature": SIGNATURE}
                ],
            },
            {
                "role": "tool",
                "tool_call_id": "toolu_d",
                "content": [{"type": "image_url", "image_url": {"url": PNG}}],
            },
        ],
        [],
        [
            {"role": "user", "content": [text("Screenshot please")]},
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "thinking",
                        "thinking": "I need a screenshot.",
                        "signature": SIGNATURE,
                    },
                    {"type": "tool_use", "id": "toolu_d", "name": "screenshot", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_d",
                        "content": [
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/png",
                                    "data": PNG.split(",")[1],
                                },
                            }
                        ],
                    }
                ],
            },
        ],
    ),
]


@pytest.mark.parametrize(
    ("messages", "system", "expected"),
    [case[1:] for case in CONVERSATIONS],
    ids=[case[0] for case in CONVERSATIONS],
)
def test_conversation_translation(
    messages: list[dict[str, Any]], system: list[dict[str, Any]], expected: list[dict[str, Any]]
) -> None:
    body = translate({"model": MODEL, "messages": messages})
    assert body.get("system", []) == system
    assert body["messages"] == expected


# --- request translation: parameters -------------------------------------------------------

TOOL_DEFS = [
    {
        "name": "get_weather",
        "input_schema": {"type": "object", "properties": {}},
        "description": "Weather in a city.",
    },
    {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
]

PARAMETERS: list[tuple[str, str, dict[str, Any], dict[str, Any], set[str]]] = [
    ("defaults", MODEL, {}, {"max_tokens": 16384}, {"temperature", "stream", "tools", "system"}),
    ("claude 3.5 default limit", "claude-3-5-haiku-latest", {}, {"max_tokens": 8192}, set()),
    ("claude 3 default limit", "claude-3-haiku-20240307", {}, {"max_tokens": 4096}, set()),
    (
        "max_completion_tokens wins",
        MODEL,
        {"max_tokens": 50, "max_completion_tokens": 70},
        {"max_tokens": 70},
        set(),
    ),
    ("stop string", MODEL, {"stop": "END"}, {"stop_sequences": ["END"]}, set()),
    ("stop list", MODEL, {"stop": ["a", "b"]}, {"stop_sequences": ["a", "b"]}, set()),
    ("temperature clamped", MODEL, {"temperature": 1.6}, {"temperature": 1.0}, {"top_p"}),
    (
        "temperature wins over top_p",
        MODEL,
        {"temperature": 0.3, "top_p": 0.5},
        {"temperature": 0.3},
        {"top_p"},
    ),
    ("top_p alone", MODEL, {"top_p": 0.5}, {"top_p": 0.5}, {"temperature"}),
    (
        "no sampling parameters on opus 4.7",
        "claude-opus-4-7",
        {"temperature": 0.2, "top_p": 0.5, "top_k": 5},
        {},
        {"temperature", "top_p", "top_k"},
    ),
    (
        "OpenAI-only parameters dropped",
        MODEL,
        {
            "seed": 7,
            "presence_penalty": 0.5,
            "frequency_penalty": 0.5,
            "logit_bias": {"1": 2},
            "logprobs": True,
            "top_logprobs": 2,
            "store": True,
            "metadata": {"k": "v"},
            "service_tier": "flex",
            "stream_options": {"include_usage": True},
            "modalities": ["text"],
            "prediction": {"type": "content", "content": "x"},
            "verbosity": "low",
            "n": 1,
        },
        {},
        {"seed", "presence_penalty", "logit_bias", "metadata", "service_tier", "n", "store"},
    ),
    ("user becomes metadata", MODEL, {"user": "u-42"}, {"metadata": {"user_id": "u-42"}}, set()),
    (
        "tools, tool_choice auto",
        MODEL,
        {"tools": TOOLS, "tool_choice": "auto"},
        {"tools": TOOL_DEFS},
        {"tool_choice"},
    ),
    (
        "tool_choice required",
        MODEL,
        {"tools": TOOLS, "tool_choice": "required"},
        {"tool_choice": {"type": "any"}},
        set(),
    ),
    (
        "tool_choice none",
        MODEL,
        {"tools": TOOLS, "tool_choice": "none"},
        {"tool_choice": {"type": "none"}},
        set(),
    ),
    (
        "named tool, no parallel calls",
        MODEL,
        {
            "tools": TOOLS,
            "tool_choice": {"type": "function", "function": {"name": "get_time"}},
            "parallel_tool_calls": False,
        },
        {"tool_choice": {"type": "tool", "name": "get_time", "disable_parallel_tool_use": True}},
        set(),
    ),
    (
        "parallel_tool_calls false alone",
        MODEL,
        {"tools": TOOLS, "parallel_tool_calls": False},
        {"tool_choice": {"type": "auto", "disable_parallel_tool_use": True}},
        set(),
    ),
    ("tool_choice without tools dropped", MODEL, {"tool_choice": "required"}, {}, {"tool_choice"}),
    (
        "strict tool",
        MODEL,
        {"tools": [{"type": "function", "function": {**WEATHER, "strict": True}}]},
        {"tools": [{"name": "get_weather", "input_schema": WEATHER["parameters"], "strict": True}]},
        set(),
    ),
    (
        "json_schema structured output",
        MODEL,
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "city", "strict": True, "schema": {"type": "object"}},
            }
        },
        {"output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}},
        set(),
    ),
    (
        "json_object becomes an instruction",
        MODEL,
        {"response_format": {"type": "json_object"}},
        {"system": [text(JSON_OBJECT_INSTRUCTION)]},
        {"output_config"},
    ),
    ("text format is a no-op", MODEL, {"response_format": {"type": "text"}}, {}, {"output_config"}),
    (
        "effort on a budget model, no client limit",
        MODEL,
        {"reasoning_effort": "low", "temperature": 0.2},
        {"thinking": {"type": "enabled", "budget_tokens": 2048}, "max_tokens": 2048 + 16384},
        {"temperature"},
    ),
    (
        "effort bounded by the client's limit",
        MODEL,
        {"reasoning_effort": "high", "max_completion_tokens": 4000, "top_p": 0.97},
        {"thinking": {"type": "enabled", "budget_tokens": 3999}, "max_tokens": 4000, "top_p": 0.97},
        set(),
    ),
    (
        "high effort on opus 4.1 stays under its 32k ceiling",
        "claude-opus-4-1-20250805",
        {"reasoning_effort": "xhigh"},
        {"thinking": {"type": "enabled", "budget_tokens": 24576}, "max_tokens": 32000},
        set(),
    ),
    (
        "a tiny limit leaves no room to think",
        MODEL,
        {"reasoning_effort": "medium", "max_tokens": 1024},
        {"max_tokens": 1024},
        {"thinking"},
    ),
    (
        "effort on an adaptive model",
        "claude-opus-4-6",
        {"reasoning_effort": "minimal", "top_p": 0.5},
        {"thinking": {"type": "adaptive"}, "output_config": {"effort": "low"}, "max_tokens": 16384},
        {"top_p"},
    ),
    ("effort none", MODEL, {"reasoning_effort": "none"}, {}, {"thinking"}),
    (
        "no thinking on claude 3.5",
        "claude-3-5-sonnet-latest",
        {"reasoning_effort": "high"},
        {},
        {"thinking"},
    ),
    (
        "a forced tool wins over thinking",
        MODEL,
        {"reasoning_effort": "high", "tools": TOOLS, "tool_choice": "required"},
        {"tool_choice": {"type": "any"}},
        {"thinking"},
    ),
    (
        "native extras forwarded",
        MODEL,
        {
            "top_k": 5,
            "thinking": {"type": "enabled", "budget_tokens": 2000},
            "output_config": {"effort": "medium"},
            "cache_control": {"type": "ephemeral"},
        },
        {
            "thinking": {"type": "enabled", "budget_tokens": 2000},
            "output_config": {"effort": "medium"},
            "cache_control": {"type": "ephemeral"},
        },
        {"top_k"},
    ),
]


@pytest.mark.parametrize(
    ("model", "extra", "expected", "absent"),
    [case[1:] for case in PARAMETERS],
    ids=[case[0] for case in PARAMETERS],
)
def test_parameter_translation(
    model: str, extra: dict[str, Any], expected: dict[str, Any], absent: set[str]
) -> None:
    body = translate(chat(model, **extra))
    assert body["model"] == model
    for key, value in expected.items():
        assert body[key] == value, key
    assert not absent & body.keys()


def test_stream_flag_and_betas() -> None:
    call = upstream_call(chat(anthropic_beta=["context-1m-2025-08-07", "new-beta-2099-01-01"]))
    body, betas = build_request(call, stream=True)
    assert body["stream"] is True
    assert betas == ["context-1m-2025-08-07", "new-beta-2099-01-01"]
    assert build_request(upstream_call(chat(anthropic_beta="a-1, b-2")), stream=False)[1] == [
        "a-1",
        "b-2",
    ]


REJECTED: list[tuple[str, dict[str, Any], str]] = [
    ("n > 1", chat(n=2), "n"),
    (
        "unsupported image type",
        chat(text="x")
        | {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/bmp;base64,Qk0="}}
                    ],
                }
            ]
        },
        "messages[0].content[0].image_url.url",
    ),
    (
        "image URL scheme",
        {
            "model": MODEL,
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}],
                }
            ],
        },
        "messages[0].content[0].image_url.url",
    ),
    (
        "audio part",
        {
            "model": MODEL,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_audio", "input_audio": {"data": "AA==", "format": "wav"}}
                    ],
                }
            ],
        },
        "messages[0].content[0]",
    ),
    (
        "legacy function role",
        {
            "model": MODEL,
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "function", "name": "f", "content": "1"},
            ],
        },
        "messages[1].role",
    ),
    (
        "tool arguments not an object",
        {
            "model": MODEL,
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "tool_calls": [tool_call("t", "f", "[1]")]},
            ],
        },
        "messages[1].tool_calls[0].function.arguments",
    ),
    (
        "tool message without id",
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "1"}],
        },
        "messages[1].tool_call_id",
    ),
    (
        "header injection in a beta",
        chat(anthropic_beta=["ok-1\r\nx-api-key: stolen"]),
        "anthropic_beta",
    ),
    (
        "schema missing",
        chat(response_format={"type": "json_schema", "json_schema": {"name": "x"}}),
        "response_format.json_schema.schema",
    ),
    (
        "only system messages",
        {"model": MODEL, "messages": [{"role": "system", "content": "Be brief."}]},
        "messages",
    ),
    ("unknown tool_choice", chat(tools=TOOLS, tool_choice="sometimes"), "tool_choice"),
]


@pytest.mark.parametrize(("body", "param"), [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED])
def test_untranslatable_requests_are_400(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        translate(body)
    assert info.value.status == 400 and info.value.param == param


# --- answer translation --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stop_reason", "expected"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        (None, "stop"),
        ("some_future_reason", "stop"),
    ],
)
def test_finish_reasons(stop_reason: str | None, expected: str) -> None:
    doc = {"id": "msg_1", "content": [text("x")], "stop_reason": stop_reason}
    assert response_from_message(doc, MODEL).choices[0].finish_reason == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"input_tokens": 10, "output_tokens": 5},
            {
                "prompt_tokens": 10,
                "completion_tokens": 5,
                "total_tokens": 15,
                "prompt_tokens_details": {"cached_tokens": 0, "cache_creation_tokens": 0},
            },
        ),
        (
            {
                "input_tokens": 10,
                "cache_read_input_tokens": 1800,
                "cache_creation_input_tokens": 200,
                "output_tokens": 50,
                "output_tokens_details": {"thinking_tokens": 30},
                "service_tier": "standard",
            },
            {
                "prompt_tokens": 2010,
                "completion_tokens": 50,
                "total_tokens": 2060,
                "prompt_tokens_details": {"cached_tokens": 1800, "cache_creation_tokens": 200},
                "completion_tokens_details": {"reasoning_tokens": 30},
            },
        ),
        ({"output_tokens": 5}, None),
        (None, None),
    ],
    ids=["plain", "cache and thinking", "no input count", "absent"],
)
def test_usage_mapping(raw: dict[str, Any] | None, expected: dict[str, Any] | None) -> None:
    usage = usage_from(raw)
    assert (usage.model_dump(exclude_none=True) if usage else None) == expected


def test_message_with_thinking_text_and_tools() -> None:
    thinking = {"type": "thinking", "thinking": "Let me look.", "signature": "sig"}
    redacted = {"type": "redacted_thinking", "data": "opaque"}
    doc: dict[str, Any] = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [
            thinking,
            redacted,
            text("I'll check. "),
            text("One moment."),
            {
                "type": "tool_use",
                "id": "toolu_1",
                "name": "get_weather",
                "input": {"city": "Paris"},
            },
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 3, "output_tokens": 4},
    }
    response = response_from_message(doc, MODEL)
    assert response.id == "msg_01" and response.model == "claude-sonnet-4-5-20250929"
    message = response.choices[0].message
    assert message.content == "I'll check. One moment."
    assert message.tool_calls is not None
    assert message.tool_calls[0].id == "toolu_1"
    assert orjson.loads(message.tool_calls[0].function.arguments or "") == {"city": "Paris"}
    extra = message.model_extra or {}
    assert extra["reasoning_content"] == "Let me look."
    assert extra["thinking_blocks"] == [thinking, redacted]
    assert response.choices[0].finish_reason == "tool_calls"
    only_tools = response_from_message({**doc, "content": doc["content"][-1:]}, MODEL)
    assert only_tools.choices[0].message.content is None
    assert "reasoning_content" not in (only_tools.choices[0].message.model_extra or {})


def sse(*events: tuple[str, dict[str, Any]]) -> bytes:
    return b"".join(
        b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"
        for name, data in events
    )


def test_stream_translation() -> None:
    wire = sse(
        (
            "message_start",
            {
                "message": {
                    "id": "msg_9",
                    "model": "claude-x",
                    "content": [],
                    "usage": {"input_tokens": 20, "cache_read_input_tokens": 5, "output_tokens": 1},
                }
            },
        ),
        (
            "content_block_start",
            {"index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
        ),
        ("ping", {}),
        (
            "content_block_delta",
            {"index": 0, "delta": {"type": "thinking_delta", "thinking": "Hmm, "}},
        ),
        (
            "content_block_delta",
            {"index": 0, "delta": {"type": "thinking_delta", "thinking": "weather."}},
        ),
        (
            "content_block_delta",
            {"index": 0, "delta": {"type": "signature_delta", "signature": "sig=="}},
        ),
        ("content_block_stop", {"index": 0}),
        ("content_block_start", {"index": 1, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"index": 1, "delta": {"type": "text_delta", "text": "Checking"}}),
        ("content_block_stop", {"index": 1}),
        (
            "content_block_start",
            {
                "index": 2,
                "content_block": {
                    "type": "tool_use",
                    "id": "toolu_9",
                    "name": "get_weather",
                    "input": {},
                },
            },
        ),
        (
            "content_block_delta",
            {"index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}},
        ),
        (
            "content_block_delta",
            {"index": 2, "delta": {"type": "input_json_delta", "partial_json": '{"city": '}},
        ),
        (
            "content_block_delta",
            {"index": 2, "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'}},
        ),
        ("content_block_stop", {"index": 2}),
        (
            "content_block_start",
            {
                "index": 3,
                "content_block": {
                    "type": "tool_use",
                    "id": "toolu_10",
                    "name": "get_time",
                    "input": {},
                },
            },
        ),
        ("content_block_stop", {"index": 3}),
        (
            "message_delta",
            {
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {"output_tokens": 40, "output_tokens_details": {"thinking_tokens": 9}},
            },
        ),
        ("some_future_event", {"x": 1}),
        ("message_stop", {}),
    )
    decoder = SSEDecoder()
    translator = StreamTranslator(MODEL)
    chunks = [c for e in decoder.feed(wire) for c in translator.feed(e.event, e.data)]
    assert translator.done
    deltas = [c.choices[0].delta.model_dump(exclude_none=True) for c in chunks if c.choices]
    assert deltas == [
        {"role": "assistant"},
        {"reasoning_content": "Hmm, "},
        {"reasoning_content": "weather."},
        {
            "thinking_blocks": [
                {"type": "thinking", "thinking": "Hmm, weather.", "signature": "sig=="}
            ]
        },
        {"content": "Checking"},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "toolu_9",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
        {
            "tool_calls": [
                {
                    "index": 1,
                    "id": "toolu_10",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": ""},
                }
            ]
        },
        {},
    ]
    assert chunks[-2].choices[0].finish_reason == "tool_calls"
    assert {c.id for c in chunks} == {"msg_9"} and {c.model for c in chunks} == {"claude-x"}
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.prompt_tokens == 25 and last.usage.completion_tokens == 40
    assert last.usage.completion_tokens_details is not None
    assert last.usage.completion_tokens_details.counts() == {"reasoning_tokens": 9}
    record = accumulate(chunks).response_record()
    assert record.content == "Checking"
    assert [(t.id, t.name, t.arguments) for t in record.tool_calls] == [
        ("toolu_9", "get_weather", '{"city": "Paris"}'),
        ("toolu_10", "get_time", ""),
    ]


def test_stream_error_event_mapping() -> None:
    translator = StreamTranslator(MODEL)
    cases = [
        ("overloaded_error", UpstreamError, 502, "upstream_overloaded"),
        ("api_error", UpstreamError, 502, "upstream_error"),
        ("rate_limit_error", RateLimited, 429, "rate_limit_error"),
        ("timeout_error", UpstreamTimeout, 504, "timeout_error"),
        ("invalid_request_error", InvalidRequest, 400, "invalid_request_error"),
    ]
    for kind, cls, status, code in cases:
        data = orjson.dumps({"type": "error", "error": {"type": kind, "message": "Boom"}})
        with pytest.raises(cls) as info:
            translator.feed("error", data)
        assert info.value.status == status and info.value.code == code
        assert "Boom" in info.value.message
    with pytest.raises(UpstreamError) as malformed:
        translator.feed("content_block_delta", b"{not json")
    assert malformed.value.code == "upstream_malformed"


# --- configuration -------------------------------------------------------------------------


def test_routing_exports() -> None:
    assert anthropic.NAME == "anthropic"
    assert all(fnmatchcase(m, anthropic.BARE_PATTERNS[0]) for m in anthropic.DEFAULT_MODELS)
    assert not fnmatchcase("gpt-4o", anthropic.BARE_PATTERNS[0])


def test_from_env() -> None:
    timeouts = Timeouts(connect=1.0)
    assert from_env({}, timeouts, 8) is None
    assert from_env({"ANTHROPIC_BASE_URL": "http://localhost:1"}, timeouts, 8) is None
    provider = from_env({"ANTHROPIC_API_KEY": KEY}, timeouts, 8)
    assert isinstance(provider, AnthropicProvider) and provider.name == "anthropic"
    assert provider._url == "https://api.anthropic.com/v1/messages"
    assert provider._headers["x-api-key"] == KEY and "Authorization" not in provider._headers
    assert provider.models() == anthropic.DEFAULT_MODELS
    assert KEY not in repr(provider._config)
    env = {
        "ANTHROPIC_AUTH_TOKEN": "tok-123",
        "ANTHROPIC_BASE_URL": "https://gateway.example/anthropic/v1/",
        "JETTY_ANTHROPIC_MODELS": "claude-a, claude-b,",
    }
    provider = from_env(env, timeouts, 8)
    assert isinstance(provider, AnthropicProvider)
    assert provider._url == "https://gateway.example/anthropic/v1/messages"
    assert provider._headers["Authorization"] == "Bearer tok-123"
    assert "x-api-key" not in provider._headers
    assert provider.models() == ("claude-a", "claude-b")
    with pytest.raises(ValueError, match="ANTHROPIC_BASE_URL"):
        from_env({"ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": "ftp://x"}, timeouts, 8)


# --- end to end against the fake upstream --------------------------------------------------


@pytest.fixture(scope="module")
async def fake() -> AsyncIterator[FakeAnthropic]:
    upstream = FakeAnthropic(api_key=KEY)
    await upstream.start()
    yield upstream
    await upstream.stop()


def make_provider(base_url: str, key: str = KEY, **timeouts: float) -> AnthropicProvider:
    limits = {"connect": 2.0, "first_byte": 5.0, "read": 5.0, **timeouts}
    return AnthropicProvider(
        AnthropicConfig(base_url=base_url, api_key=key, timeouts=Timeouts(**limits))
    )


@pytest.fixture
async def provider(fake: FakeAnthropic) -> AsyncIterator[AnthropicProvider]:
    fake.reset()
    adapter = make_provider(fake.base_url)
    await adapter.start()
    yield adapter
    await adapter.aclose()


async def test_complete(provider: AnthropicProvider, fake: FakeAnthropic) -> None:
    body = chat(MODEL, temperature=0.5, stop=["END"], user="u-1", seed=3)
    response = await provider.complete(upstream_call(body))
    choice = response.choices[0]
    assert choice.message.content == "Hello! How can I help you today?"
    assert choice.finish_reason == "stop"
    assert response.id.startswith("msg_") and response.model == MODEL
    assert response.usage is not None and response.usage.prompt_tokens > 0
    assert response.usage.completion_tokens > 0
    sent = fake.requests[-1]
    assert sent.status == 200 and sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "anthropic-beta" not in sent.headers
    assert sent.body["max_tokens"] == 16384 and sent.body["temperature"] == 0.5
    assert sent.body["stop_sequences"] == ["END"] and "seed" not in sent.body


@pytest.mark.parametrize("case", CONVERSATIONS, ids=[c[0] for c in CONVERSATIONS])
async def test_fake_accepts_every_translated_conversation(
    provider: AnthropicProvider, fake: FakeAnthropic, case: tuple[Any, ...]
) -> None:
    await provider.complete(upstream_call({"model": MODEL, "messages": case[1]}))
    assert fake.requests[-1].status == 200


@pytest.mark.parametrize("case", PARAMETERS, ids=[c[0] for c in PARAMETERS])
async def test_fake_accepts_every_translated_parameter_set(
    provider: AnthropicProvider, fake: FakeAnthropic, case: tuple[Any, ...]
) -> None:
    model, extra = case[1], case[2]
    await provider.complete(upstream_call(chat(model, **extra)))
    assert fake.requests[-1].status == 200


async def test_stream(provider: AnthropicProvider, fake: FakeAnthropic) -> None:
    fake.script(MODEL, Script(text="alpha beta gamma delta"))
    body = chat(MODEL, stream=True, anthropic_beta=["interleaved-thinking-2025-05-14"])
    chunks = await collect(provider.stream(upstream_call(body)))
    sent = fake.requests[-1]
    assert sent.body["stream"] is True
    assert sent.headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].delta.content for c in chunks[1:5]] == [
        "alpha",
        " beta",
        " gamma",
        " delta",
    ]
    acc = accumulate(chunks)
    record = acc.response_record()
    assert record.content == "alpha beta gamma delta" and record.finish_reason == "stop"
    assert acc.upstream_id is not None and acc.upstream_id.startswith("msg_")
    assert chunks[-1].choices == [] and acc.usage is not None
    assert acc.usage.completion_tokens == 5  # the fake's cumulative output_tokens


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_calls(provider: AnthropicProvider, stream: bool) -> None:
    call = upstream_call(chat("fake-tools", stream=stream, tools=TOOLS))
    acc = Accumulator()
    if stream:
        acc = accumulate(await collect(provider.stream(call)))
    else:
        acc.add_response(await provider.complete(call))
    record = acc.response_record()
    assert record.finish_reason == "tool_calls" and record.content is None
    (tool,) = record.tool_calls
    assert tool.name == "get_weather" and tool.id and tool.id.startswith("toolu_")
    assert orjson.loads(tool.arguments) == {"city": "Paris", "unit": "celsius"}


@pytest.mark.parametrize("stream", [False, True])
async def test_thinking_round_trip(
    provider: AnthropicProvider, fake: FakeAnthropic, stream: bool
) -> None:
    fake.script(
        MODEL,
        Script(
            thinking="Paris weather needs the tool.",
            preface="Let me check.",
            tool_calls=[("get_weather", '{"city": "Paris"}')],
            thinking_tokens=7,
        ),
    )
    body = chat(MODEL, stream=stream, tools=TOOLS, reasoning_effort="low")
    if stream:
        chunks = await collect(provider.stream(upstream_call(body)))
        reasoning = "".join(
            (c.choices[0].delta.model_extra or {}).get("reasoning_content", "")
            for c in chunks
            if c.choices
        )
        blocks = [
            b
            for c in chunks
            if c.choices
            for b in (c.choices[0].delta.model_extra or {}).get("thinking_blocks", [])
        ]
        acc = accumulate(chunks)
        usage = acc.usage
    else:
        response = await provider.complete(upstream_call(body))
        extra = response.choices[0].message.model_extra or {}
        reasoning, blocks = extra["reasoning_content"], extra["thinking_blocks"]
        acc = Accumulator()
        acc.add_response(response)
        usage = response.usage
    assert fake.requests[-1].body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert reasoning == "Paris weather needs the tool."
    assert blocks == [{"type": "thinking", "thinking": reasoning, "signature": SIGNATURE}]
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.counts() == {"reasoning_tokens": 7}
    record = acc.response_record()
    assert record.content == "Let me check." and record.tool_calls[0].name == "get_weather"
    # Next turn: the signed block goes back with the tool result; the fake validates it.
    tool = record.tool_calls[0]
    assert tool.id is not None and tool.name is not None
    follow_up = body["messages"] + [
        {
            "role": "assistant",
            "content": record.content,
            "tool_calls": [tool_call(tool.id, tool.name, tool.arguments)],
            "thinking_blocks": blocks,
        },
        {"role": "tool", "tool_call_id": tool.id, "content": "18C"},
    ]
    fake.script(MODEL, Script(text="It is 18C."))
    answer = await provider.complete(
        upstream_call({**body, "messages": follow_up, "stream": False})
    )
    assert answer.choices[0].message.content == "It is 18C."
    assert fake.requests[-1].body["messages"][1]["content"][0] == blocks[0]


@pytest.mark.parametrize("stream", [False, True])
async def test_cache_usage(provider: AnthropicProvider, stream: bool) -> None:
    call = upstream_call(chat("fake-cache", stream=stream))
    if stream:
        usage = accumulate(await collect(provider.stream(call))).usage
    else:
        usage = (await provider.complete(call)).usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.counts() == {
        "cached_tokens": 1800,
        "cache_creation_tokens": 200,
    }
    assert usage.prompt_tokens > 2000
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


@pytest.mark.parametrize("stream", [False, True])
async def test_missing_usage(provider: AnthropicProvider, stream: bool) -> None:
    call = upstream_call(chat("fake-no-usage", stream=stream))
    if stream:
        chunks = await collect(provider.stream(call))
        assert all(c.usage is None for c in chunks) and chunks[-1].choices
        assert accumulate(chunks).response_record().content
    else:
        response = await provider.complete(call)
        assert response.usage is None and response.choices[0].message.content


async def attempt(provider: AnthropicProvider, model: str, stream: bool) -> ApiError:
    call = upstream_call(chat(model, stream=stream))
    with pytest.raises(ApiError) as info:
        if stream:
            await collect(provider.stream(call))
        else:
            await provider.complete(call)
    return info.value


@pytest.mark.parametrize("stream", [False, True])
async def test_error_mapping(
    provider: AnthropicProvider, fake: FakeAnthropic, stream: bool
) -> None:
    limited = await attempt(provider, "fake-429", stream)
    assert isinstance(limited, RateLimited) and limited.status == 429
    assert limited.retry_after == 7 and limited.headers() == {"Retry-After": "7"}

    overloaded = await attempt(provider, "fake-529", stream)
    assert isinstance(overloaded, UpstreamError) and overloaded.status == 502
    assert overloaded.code == "upstream_overloaded" and "Overloaded" in overloaded.message
    fake.script("claude-busy", Script(status=529, error_type="overloaded_error", retry_after="3"))
    busy = await attempt(provider, "claude-busy", stream)
    assert busy.status == 502 and busy.retry_after == 3

    failed = await attempt(provider, "fake-500", stream)
    assert isinstance(failed, UpstreamError) and failed.status == 502

    invalid = await attempt(provider, "fake-400", stream)
    assert invalid.status == 400 and invalid.error_type == "invalid_request_error"
    assert invalid.message == "prompt is too long: 215000 tokens > 200000 maximum"

    fake.script(
        "claude-gone",
        Script(status=404, error_type="not_found_error", error_message="model: claude-gone"),
    )
    missing = await attempt(provider, "claude-gone", stream)
    assert missing.status == 404 and missing.message == "model: claude-gone"

    fake.script(
        "claude-broke",
        Script(status=402, error_type="billing_error", error_message="card declined"),
    )
    billing = await attempt(provider, "claude-broke", stream)
    assert billing.status == 502 and "card declined" not in billing.message

    fake.script(
        "claude-late",
        Script(status=504, error_type="timeout_error", error_message="Request timed out"),
    )
    late = await attempt(provider, "claude-late", stream)
    assert isinstance(late, UpstreamTimeout) and late.status == 504


async def test_rejected_key_is_a_502_without_the_key(fake: FakeAnthropic) -> None:
    wrong = "sk-ant-wrong-key-abcdefghijklmnop"
    adapter = make_provider(fake.base_url, key=wrong)
    try:
        error = await attempt(adapter, MODEL, stream=False)
    finally:
        await adapter.aclose()
    assert error.status == 502 and error.code == "upstream_auth_failed"
    assert "abcdefghijklmnop" not in error.message and wrong not in repr(adapter._config)


async def test_auth_token_is_sent_as_bearer(fake: FakeAnthropic) -> None:
    adapter = AnthropicProvider(AnthropicConfig(base_url=fake.base_url, auth_token=KEY))
    try:
        response = await adapter.complete(upstream_call(chat()))
    finally:
        await adapter.aclose()
    assert response.choices[0].message.content
    headers = fake.requests[-1].headers
    assert headers["Authorization"] == f"Bearer {KEY}" and "x-api-key" not in headers


async def test_untranslatable_request_never_reaches_the_upstream(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    with pytest.raises(InvalidRequest):
        await provider.complete(upstream_call(chat(n=3)))
    with pytest.raises(InvalidRequest):
        await collect(provider.stream(upstream_call(chat(n=3, stream=True))))
    assert not fake.requests


async def test_unreachable_upstream() -> None:
    adapter = make_provider(f"http://127.0.0.1:{free_port()}")
    try:
        error = await attempt(adapter, MODEL, stream=True)
    finally:
        await adapter.aclose()
    assert error.status == 502 and error.code == "upstream_unreachable"


async def test_first_byte_timeout(fake: FakeAnthropic) -> None:
    fake.script("claude-slow", Script(first_byte_delay=1.0))
    adapter = make_provider(fake.base_url, first_byte=0.2)
    try:
        error = await attempt(adapter, "claude-slow", stream=False)
    finally:
        await adapter.aclose()
    assert isinstance(error, UpstreamTimeout) and error.status == 504


async def test_read_timeout_mid_stream(fake: FakeAnthropic) -> None:
    fake.script("claude-stalls", Script(text="a b c d", chunk_delay=1.0))
    adapter = make_provider(fake.base_url, read=0.2)
    received: list[ChatChunk] = []
    try:
        with pytest.raises(UpstreamTimeout):
            async for chunk in adapter.stream(upstream_call(chat("claude-stalls", stream=True))):
                received.append(chunk)
    finally:
        await adapter.aclose()
    assert received  # the stream had started before it stalled


async def test_cut_stream(provider: AnthropicProvider) -> None:
    received: list[ChatChunk] = []
    with pytest.raises(UpstreamError) as info:
        async for chunk in provider.stream(upstream_call(chat("fake-cut", stream=True))):
            received.append(chunk)
    assert info.value.status == 502 and info.value.code == "upstream_stream_interrupted"
    assert accumulate(received).response_record().content == "one two three"


async def test_error_event_in_stream(provider: AnthropicProvider) -> None:
    received: list[ChatChunk] = []
    with pytest.raises(UpstreamError) as info:
        async for chunk in provider.stream(upstream_call(chat("fake-stream-error", stream=True))):
            received.append(chunk)
    assert info.value.status == 502 and info.value.code == "upstream_overloaded"
    assert "Overloaded" in info.value.message
    assert accumulate(received).response_record().content == "one two"


async def test_leaving_a_stream_closes_the_upstream_request(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    fake.script("claude-long", Script(text="word " * 50, chunk_delay=0.05))
    async with aclosing(provider.stream(upstream_call(chat("claude-long", stream=True)))) as chunks:
        async for _ in chunks:
            break
    await asyncio.wait_for(fake.disconnected.wait(), 1.0)
    assert fake.disconnects[-1][0] == "claude-long"


# --- the fake is as strict as the real API -------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "body", "status", "message"),
    [
        (
            {"x-api-key": KEY},
            {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
            400,
            "anthropic-version: header is required",
        ),
        ({"anthropic-version": "2023-06-01"}, {}, 401, "x-api-key header is required"),
        (
            None,
            {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
            400,
            "max_tokens: Field required",
        ),
        (
            None,
            {
                "model": MODEL,
                "max_tokens": 5,
                "n": 2,
                "messages": [{"role": "user", "content": "hi"}],
            },
            400,
            "n: Extra inputs are not permitted",
        ),
        (
            None,
            {
                "model": MODEL,
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
            },
            400,
            "roles must alternate",
        ),
        (
            None,
            {"model": MODEL, "max_tokens": 5, "messages": [{"role": "system", "content": "a"}]},
            400,
            "messages.0.role",
        ),
        (
            None,
            {
                "model": MODEL,
                "max_tokens": 5,
                "messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}],
            },
            400,
            "text content blocks must be non-empty",
        ),
        (
            None,
            {
                "model": MODEL,
                "max_tokens": 5,
                "messages": [
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x"}]}
                ],
            },
            400,
            "unexpected `tool_use_id`",
        ),
        (
            None,
            {
                "model": MODEL,
                "max_tokens": 2000,
                "temperature": 0.5,
                "thinking": {"type": "enabled", "budget_tokens": 1024},
                "messages": [{"role": "user", "content": "hi"}],
            },
            400,
            "`temperature` may only be set to 1",
        ),
    ],
    ids=[
        "no version",
        "no key",
        "no max_tokens",
        "unknown field",
        "alternation",
        "system role",
        "empty text",
        "orphan tool_result",
        "thinking with temperature",
    ],
)
async def test_fake_validates_like_the_api(
    fake: FakeAnthropic,
    headers: dict[str, str] | None,
    body: dict[str, Any],
    status: int,
    message: str,
) -> None:
    sent = headers if headers is not None else {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{fake.base_url}/v1/messages", json=body, headers=sent) as response,
    ):
        doc = await response.json()
    assert response.status == status
    assert doc["type"] == "error" and message in doc["error"]["message"]
    assert response.headers["request-id"] == doc["request_id"]


async def test_fake_stream_framing(fake: FakeAnthropic) -> None:
    fake.reset()
    fake.script(MODEL, Script(text="Hi there"))
    body = {
        "model": MODEL,
        "max_tokens": 5,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{fake.base_url}/v1/messages", json=body, headers=headers) as response,
    ):
        wire = await response.read()
    assert response.headers["Content-Type"].startswith("text/event-stream")
    frames = wire.split(b"\n\n")
    assert frames[-1] == b""
    names = [f.split(b"\n")[0] for f in frames[:-1]]
    assert names == [
        b"event: message_start",
        b"event: content_block_start",
        b"event: ping",
        b"event: content_block_delta",
        b"event: content_block_delta",
        b"event: content_block_stop",
        b"event: message_delta",
        b"event: message_stop",
    ]
    assert frames[2] == b'event: ping\ndata: {"type": "ping"}'
    assert frames[3] == (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"Hi"}}'
    )
    assert frames[-2] == b'event: message_stop\ndata: {"type":"message_stop"}'


def test_one_hour_cache_writes_are_reported_apart() -> None:
    """So they can be priced at the 1-hour rate (docs/pricing.md)."""
    usage = usage_from(
        {
            "input_tokens": 10,
            "cache_read_input_tokens": 5,
            "cache_creation_input_tokens": 100,
            "cache_creation": {"ephemeral_5m_input_tokens": 40, "ephemeral_1h_input_tokens": 60},
            "output_tokens": 7,
        }
    )
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.prompt_tokens == 115
    assert usage.prompt_tokens_details.counts() == {
        "cached_tokens": 5,
        "cache_creation_tokens": 100,
        "cache_creation_1h_tokens": 60,
    }


def test_cache_control_on_a_tool_result_is_kept() -> None:
    """claude-code's conversation cache breakpoint sits on its last tool result."""
    body = orjson.dumps(
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 10,
            "messages": [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "t1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                },
                {
                    "role": "tool",
                    "tool_call_id": "t1",
                    "content": "ok",
                    "cache_control": {"type": "ephemeral"},
                },
            ],
        }
    )
    request = parse_chat_request(body)
    out, _ = build_request(
        UpstreamCall(model="claude-sonnet-4-5", request=request, body=body), stream=False
    )
    (result,) = out["messages"][-1]["content"]
    assert result["type"] == "tool_result"
    assert result["cache_control"] == {"type": "ephemeral"}
