"""The Gemini adapter: table-driven translation both ways (request bodies, JSON
Schema conversion, responses, stream documents, usage, finish reasons, errors),
then the adapter end to end against tests/fakes/gemini_upstream.py — complete and
stream, multi-turn tools with thought signatures, images, JSON mode, error
mapping, blocked prompts, cut streams, error events, timeouts and early close."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import orjson
import pytest

from jetty_cli.procs import free_port
from services.proxy.accumulate import Accumulator
from services.proxy.providers.base import ChatChunk, UpstreamCall
from services.proxy.providers.gemini import (
    BARE_PATTERNS,
    DEFAULT_MODELS,
    NAME,
    GeminiConfig,
    GeminiProvider,
    StreamTranslator,
    api_root,
    decode_response,
    error_from_status,
    from_env,
    model_path,
)
from services.proxy.providers.gemini_translate import (
    SKIP_SIGNATURE,
    encode_request,
    to_gemini_schema,
)
from services.proxy.providers.openai_compat import Timeouts
from services.proxy.providers.sse import SSEDecoder
from shared.errors import ApiError, InvalidRequest, RateLimited, UpstreamError, UpstreamTimeout
from shared.openai_chat import parse_chat_request
from tests.fakes.gemini_upstream import FakeGemini, Script, google_json

KEY = "AIzaSy-provider-key-0123456789abcdef"
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5E"
    "rkJggg=="
)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
WEATHER_DECL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {
        "type": "OBJECT",
        "properties": {
            "city": {"type": "STRING"},
            "unit": {"type": "STRING", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city"],
    },
}


def upstream_call(body: dict[str, Any], model: str | None = None) -> UpstreamCall:
    raw = orjson.dumps(body)
    request = parse_chat_request(raw)
    return UpstreamCall(model=model or request.model, request=request, body=raw)


def chat(
    model: str = "gemini-2.5-flash", text: str = "hello there", **extra: Any
) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def encoded(body: dict[str, Any]) -> dict[str, Any]:
    request = parse_chat_request(orjson.dumps(body))
    result: dict[str, Any] = orjson.loads(encode_request(request, request.model))
    return result


async def collect(stream: AsyncIterator[ChatChunk]) -> list[ChatChunk]:
    return [chunk async for chunk in stream]


def accumulate(chunks: list[ChatChunk]) -> Accumulator:
    acc = Accumulator()
    for chunk in chunks:
        acc.add_chunk(chunk)
    return acc


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "parts": [{"text": text}]}


# --- request translation -----------------------------------------------------------------

TOOL_TURN = [
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_a",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                "extra_content": {"google": {"thought_signature": "c2lnLWE="}},
            },
            {
                "id": "call_b",
                "type": "function",
                "function": {"name": "get_time", "arguments": '{"city": "Rome"}'},
            },
        ],
    },
    {"role": "tool", "tool_call_id": "call_a", "content": '{"temp": 21}'},
    {"role": "tool", "tool_call_id": "call_b", "content": "14:05"},
]

REQUEST_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "plain text",
        {"messages": [{"role": "user", "content": "hi"}]},
        {"contents": [user("hi")]},
    ),
    (
        "leading system and developer messages become systemInstruction",
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
                {"role": "user", "content": "hi"},
            ]
        },
        {
            "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Use French."}]},
            "contents": [user("hi")],
        },
    ),
    (
        "a system message mid-conversation is hoisted, in order",
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "system", "content": "The user switched to plan mode."},
                {"role": "user", "content": "plan it"},
            ]
        },
        {
            "systemInstruction": {
                "parts": [{"text": "Be brief."}, {"text": "The user switched to plan mode."}]
            },
            "contents": [
                user("hi"),
                {"role": "model", "parts": [{"text": "Hello!"}]},
                user("plan it"),
            ],
        },
    ),
    (
        "consecutive same-role turns merge; empty text is dropped",
        {
            "messages": [
                {"role": "user", "content": "one"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": ""}, {"type": "text", "text": "two"}],
                },
                {"role": "assistant", "content": ""},
            ]
        },
        {"contents": [{"role": "user", "parts": [{"text": "one"}, {"text": "two"}]}]},
    ),
    (
        "multi-turn tools: calls, signatures, results by id",
        {"messages": TOOL_TURN},
        {
            "contents": [
                user("Weather in Paris and Rome?"),
                {
                    "role": "model",
                    "parts": [
                        {
                            "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                            "thoughtSignature": "c2lnLWE=",
                        },
                        {"functionCall": {"name": "get_time", "args": {"city": "Rome"}}},
                    ],
                },
                {
                    "role": "user",
                    "parts": [
                        {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}},
                        {"functionResponse": {"name": "get_time", "response": {"output": "14:05"}}},
                    ],
                },
            ]
        },
    ),
    (
        "a call without a signature gets the documented skip value",
        {
            "messages": [
                {"role": "user", "content": "go"},
                {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [
                        {"id": "x", "type": "function", "function": {"name": "f", "arguments": ""}}
                    ],
                },
                {"role": "tool", "tool_call_id": "x", "content": [{"type": "text", "text": "ok"}]},
            ]
        },
        {
            "contents": [
                user("go"),
                {
                    "role": "model",
                    "parts": [
                        {"text": "Checking."},
                        {
                            "functionCall": {"name": "f", "args": {}},
                            "thoughtSignature": SKIP_SIGNATURE,
                        },
                    ],
                },
                {
                    "role": "user",
                    "parts": [{"functionResponse": {"name": "f", "response": {"output": "ok"}}}],
                },
            ]
        },
    ),
    (
        "images by base64 data URL and by URL",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Compare"},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                        {
                            "type": "image_url",
                            "image_url": {
                                "url": "https://example.com/cat.JPG?s=1",
                                "detail": "high",
                            },
                        },
                        {"type": "image_url", "image_url": {"url": "https://example.com/render"}},
                    ],
                }
            ]
        },
        {
            "contents": [
                {
                    "role": "user",
                    "parts": [
                        {"text": "Compare"},
                        {"inlineData": {"mimeType": "image/png", "data": PNG}},
                        {
                            "fileData": {
                                "fileUri": "https://example.com/cat.JPG?s=1",
                                "mimeType": "image/jpeg",
                            }
                        },
                        {"fileData": {"fileUri": "https://example.com/render"}},
                    ],
                }
            ]
        },
    ),
    (
        "audio and file parts",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "input_audio",
                            "input_audio": {"data": "UklGRg==", "format": "wav"},
                        },
                        {
                            "type": "file",
                            "file": {
                                "file_data": "data:application/pdf;base64,JVBERi0=",
                                "filename": "a.pdf",
                            },
                        },
                    ],
                }
            ]
        },
        {
            "contents": [
                {
                    "role": "user",
                    "parts": [
                        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
                        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
                    ],
                }
            ]
        },
    ),
    (
        "sampling parameters; OpenAI-only ones are not sent",
        {
            "messages": [{"role": "user", "content": "hi"}],
            "temperature": 0.2,
            "top_p": 0.9,
            "max_tokens": 50,
            "max_completion_tokens": 64,
            "stop": "END",
            "n": 2,
            "seed": 7,
            "presence_penalty": 0.5,
            "frequency_penalty": 0.25,
            "user": "u-1",
            "logit_bias": {"1": 2},
            "parallel_tool_calls": False,
            "metadata": {"k": "v"},
            "stream_options": {"include_usage": True},
        },
        {
            "contents": [user("hi")],
            "generationConfig": {
                "stopSequences": ["END"],
                "candidateCount": 2,
                "maxOutputTokens": 64,
                "temperature": 0.2,
                "topP": 0.9,
                "seed": 7,
                "presencePenalty": 0.5,
                "frequencyPenalty": 0.25,
            },
        },
    ),
    (
        "JSON mode",
        {
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_object"},
        },
        {"contents": [user("hi")], "generationConfig": {"responseMimeType": "application/json"}},
    ),
    (
        "structured output",
        {
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "answer",
                    "strict": True,
                    "schema": {
                        "type": "object",
                        "properties": {
                            "answer": {"type": "string"},
                            "score": {"type": ["number", "null"]},
                        },
                        "required": ["answer", "score"],
                        "additionalProperties": False,
                    },
                },
            },
        },
        {
            "contents": [user("hi")],
            "generationConfig": {
                "responseMimeType": "application/json",
                "responseSchema": {
                    "type": "OBJECT",
                    "properties": {
                        "answer": {"type": "STRING"},
                        "score": {"type": "NUMBER", "nullable": True},
                    },
                    "required": ["answer", "score"],
                },
            },
        },
    ),
    (
        "tools with a forced function",
        {
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [
                WEATHER,
                {
                    "type": "function",
                    "function": {
                        "name": "ping",
                        "parameters": {"type": "object", "properties": {}},
                    },
                },
            ],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        },
        {
            "contents": [user("hi")],
            "tools": [{"functionDeclarations": [WEATHER_DECL, {"name": "ping"}]}],
            "toolConfig": {
                "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}
            },
        },
    ),
    (
        "tool_choice none / required",
        {
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [WEATHER],
            "tool_choice": "none",
        },
        {
            "contents": [user("hi")],
            "tools": [{"functionDeclarations": [WEATHER_DECL]}],
            "toolConfig": {"functionCallingConfig": {"mode": "NONE"}},
        },
    ),
    (
        "allowed_tools auto offers only the allowed functions",
        {
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [WEATHER, {"type": "function", "function": {"name": "ping"}}],
            "tool_choice": {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "auto",
                    "tools": [{"type": "function", "function": {"name": "ping"}}],
                },
            },
        },
        {
            "contents": [user("hi")],
            "tools": [{"functionDeclarations": [{"name": "ping"}]}],
            "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
        },
    ),
    (
        "reasoning_effort on 2.5 becomes a thinking budget",
        {"messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "low"},
        {
            "contents": [user("hi")],
            "generationConfig": {"thinkingConfig": {"thinkingBudget": 1024}},
        },
    ),
]


@pytest.mark.parametrize(
    ("body", "expected"),
    [pytest.param(body, expected, id=name) for name, body, expected in REQUEST_CASES],
)
def test_request_translation(body: dict[str, Any], expected: dict[str, Any]) -> None:
    assert encoded({"model": "gemini-2.5-flash", **body}) == expected


@pytest.mark.parametrize(
    ("model", "effort", "expected"),
    [
        ("gemini-3-pro-preview", "high", {"thinkingLevel": "high"}),
        ("gemini-3-flash-preview", "none", {"thinkingLevel": "minimal"}),
        ("gemini-2.5-pro", "medium", {"thinkingBudget": 8192}),
        ("gemini-2.0-flash", "high", None),
    ],
)
def test_reasoning_effort(model: str, effort: str, expected: dict[str, Any] | None) -> None:
    body = encoded(chat(model, reasoning_effort=effort))
    assert body.get("generationConfig", {}).get("thinkingConfig") == expected


@pytest.mark.parametrize(
    ("messages", "extra", "param"),
    [
        ([{"role": "system", "content": "only a system prompt"}], {}, "messages"),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}],
                }
            ],
            {},
            "messages[0].content[0].image_url.url",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "data:image/png,raw"}}],
                }
            ],
            {},
            "messages[0].content[0].image_url.url",
        ),
        (
            [
                {
                    "role": "system",
                    "content": [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}],
                }
            ],
            {},
            "messages[0].content[0]",
        ),
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "tool", "tool_call_id": "nope", "content": "x"},
            ],
            {},
            "messages[1].tool_call_id",
        ),
        (
            [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "a",
                            "type": "function",
                            "function": {"name": "f", "arguments": "[1]"},
                        }
                    ],
                },
            ],
            {},
            "messages[1].tool_calls[0].function.arguments",
        ),
        (
            [{"role": "user", "content": "hi"}],
            {"tools": [{"type": "custom", "custom": {"name": "x"}}]},
            "tools[0].type",
        ),
        (
            [{"role": "user", "content": "hi"}],
            {"response_format": {"type": "yaml"}},
            "response_format.type",
        ),
    ],
)
def test_untranslatable_requests_are_400s(
    messages: list[dict[str, Any]], extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        encoded({"model": "gemini-2.5-flash", "messages": messages, **extra})
    assert info.value.status == 400 and info.value.param == param


SCHEMA_CASES: list[tuple[str, Any, dict[str, Any]]] = [
    ("not a schema", True, {}),
    (
        "refs, defs, oneOf, const, formats",
        {
            "type": "object",
            "$defs": {
                "Point": {
                    "type": "object",
                    "properties": {"x": {"type": "integer", "format": "int64"}},
                }
            },
            "properties": {
                "at": {"$ref": "#/$defs/Point", "description": "where"},
                "kind": {"oneOf": [{"const": "a"}, {"const": "b"}]},
                "when": {"type": "string", "format": "date-time"},
                "mail": {"type": "string", "format": "email", "minLength": 3},
                "level": {"type": "integer", "enum": [1, 2, 3], "exclusiveMinimum": 0},
            },
            "required": ["at", "ghost"],
        },
        {
            "type": "OBJECT",
            "properties": {
                "at": {
                    "type": "OBJECT",
                    "description": "where",
                    "properties": {"x": {"type": "INTEGER", "format": "int64"}},
                },
                "kind": {
                    "anyOf": [{"type": "STRING", "enum": ["a"]}, {"type": "STRING", "enum": ["b"]}]
                },
                "when": {"type": "STRING", "format": "date-time"},
                "mail": {"type": "STRING", "minLength": 3},
                "level": {"type": "INTEGER"},
            },
            "required": ["at"],
        },
    ),
    (
        "nullable unions and free-form objects",
        {
            "type": "object",
            "properties": {
                "maybe": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                "either": {"type": ["string", "integer"]},
                "meta": {"type": "object", "additionalProperties": {"type": "string"}},
                "list": {"type": "array"},
                "untyped": {"properties": {"a": {"type": "boolean"}}},
            },
        },
        {
            "type": "OBJECT",
            "properties": {
                "maybe": {"type": "STRING", "nullable": True},
                "either": {"anyOf": [{"type": "STRING"}, {"type": "INTEGER"}]},
                "meta": {},
                "list": {"type": "ARRAY", "items": {}},
                "untyped": {"type": "OBJECT", "properties": {"a": {"type": "BOOLEAN"}}},
            },
        },
    ),
    (
        "recursion is cut where it recurs; allOf merges",
        {
            "$ref": "#/definitions/Node",
            "definitions": {
                "Node": {
                    "allOf": [{"properties": {"name": {"type": "string"}}, "required": ["name"]}],
                    "type": "object",
                    "properties": {
                        "children": {"type": "array", "items": {"$ref": "#/definitions/Node"}}
                    },
                }
            },
        },
        {
            "type": "OBJECT",
            "properties": {
                "children": {"type": "ARRAY", "items": {}},
                "name": {"type": "STRING"},
            },
            "required": ["name"],
        },
    ),
]


@pytest.mark.parametrize(
    ("schema", "expected"),
    [pytest.param(schema, expected, id=name) for name, schema, expected in SCHEMA_CASES],
)
def test_schema_conversion(schema: Any, expected: dict[str, Any]) -> None:
    assert to_gemini_schema(schema) == expected


def test_schema_conversion_is_bounded() -> None:
    # Each definition refers to the next twice: naive inlining is 2**40 nodes.
    defs = {
        f"D{i}": {
            "type": "object",
            "properties": {"a": {"$ref": f"#/$defs/D{i + 1}"}, "b": {"$ref": f"#/$defs/D{i + 1}"}},
        }
        for i in range(40)
    }
    converted = to_gemini_schema({"$ref": "#/$defs/D0", "$defs": defs})
    assert len(orjson.dumps(converted)) < 2_000_000


# --- response translation ----------------------------------------------------------------


def response_doc(*candidates: dict[str, Any], **extra: Any) -> bytes:
    return orjson.dumps(
        {
            "candidates": list(candidates),
            "modelVersion": "gemini-2.5-flash",
            "responseId": "resp-1",
            **extra,
        }
    )


def candidate(
    *parts: dict[str, Any], finish: str | None = "STOP", index: int = 0
) -> dict[str, Any]:
    out: dict[str, Any] = {"content": {"parts": list(parts), "role": "model"}, "index": index}
    if finish:
        out["finishReason"] = finish
    return out


@pytest.mark.parametrize(
    ("native", "parts", "expected"),
    [
        ("STOP", [{"text": "hi"}], "stop"),
        ("MAX_TOKENS", [{"text": "hi"}], "length"),
        ("SAFETY", [], "content_filter"),
        ("RECITATION", [{"text": "hi"}], "content_filter"),
        ("BLOCKLIST", [], "content_filter"),
        ("PROHIBITED_CONTENT", [], "content_filter"),
        ("SPII", [], "content_filter"),
        ("STOP", [{"functionCall": {"name": "f", "args": {}}}], "tool_calls"),
        ("MALFORMED_FUNCTION_CALL", [], "stop"),
        ("OTHER", [], "stop"),
    ],
)
def test_finish_reasons(native: str, parts: list[dict[str, Any]], expected: str) -> None:
    response = decode_response(response_doc(candidate(*parts, finish=native)), "m", NAME)
    assert response.choices[0].finish_reason == expected
    translator = StreamTranslator("m", NAME)
    chunks = translator.feed(response_doc(candidate(*parts, finish=native)))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == expected and translator.finished


def test_response_with_text_tools_thoughts_and_usage() -> None:
    doc = response_doc(
        candidate(
            {"text": "Let me think", "thought": True},
            {"text": "Checking "},
            {"text": "both."},
            {"functionCall": {"name": "a", "args": {"x": 1}}, "thoughtSignature": "sig=="},
            {"functionCall": {"id": "fc-9", "name": "b", "args": {}}},
            {"text": "", "thoughtSignature": "tail=="},
        ),
        usageMetadata={
            "promptTokenCount": 100,
            "candidatesTokenCount": 20,
            "thoughtsTokenCount": 30,
            "cachedContentTokenCount": 60,
            "totalTokenCount": 150,
        },
    )
    response = decode_response(doc, "gemini-x", NAME)
    assert response.id == "resp-1" and response.model == "gemini-2.5-flash"
    (choice,) = response.choices
    message = choice.message
    assert message.content == "Checking both." and choice.finish_reason == "tool_calls"
    assert message.model_extra == {"reasoning_content": "Let me think"}
    assert message.tool_calls is not None
    first, second = message.tool_calls
    assert first.id.startswith("call_") and first.function.arguments == '{"x":1}'
    assert first.model_extra == {"extra_content": {"google": {"thought_signature": "sig=="}}}
    assert second.id == "fc-9" and not second.model_extra
    assert response.usage is not None
    assert response.usage.model_dump() == {
        "prompt_tokens": 100,
        "completion_tokens": 50,
        "total_tokens": 150,
        "prompt_tokens_details": {"cached_tokens": 60},
        "completion_tokens_details": {"reasoning_tokens": 30},
    }


def test_stream_translation_of_several_candidates() -> None:
    translator = StreamTranslator("gemini-x", NAME)
    usage = {"promptTokenCount": 5, "candidatesTokenCount": 2, "totalTokenCount": 7}
    chunks = translator.feed(
        response_doc(
            candidate({"text": "A"}, finish=None),
            candidate({"text": "B"}, finish=None, index=1),
            usageMetadata=usage,
        )
    )
    assert [
        (c.choices[0].index, c.choices[0].delta.role, c.choices[0].delta.content) for c in chunks
    ] == [
        (0, "assistant", "A"),
        (1, "assistant", "B"),
    ]
    assert not translator.finished
    chunks += translator.feed(
        response_doc(
            candidate({"functionCall": {"name": "f", "args": {"q": "x"}}}),
            candidate({"text": "!"}, index=1),
            usageMetadata={**usage, "candidatesTokenCount": 9, "totalTokenCount": 14},
        )
    )
    assert translator.finished
    (tail,) = translator.finish()
    assert tail.choices == [] and tail.usage is not None and tail.usage.completion_tokens == 9
    record = accumulate([*chunks, tail]).response_record()
    first, second = record.choices
    assert first.finish_reason == "tool_calls" and first.content == "A"
    assert [(t.name, t.arguments) for t in first.tool_calls] == [("f", '{"q":"x"}')]
    assert second.content == "B!" and second.finish_reason == "stop"
    assert len({c.id for c in chunks}) == 1


def test_blocked_prompt_is_a_content_filter_error() -> None:
    doc = orjson.dumps(
        {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 3}}
    )
    for attempt in (
        lambda: decode_response(doc, "m", NAME),
        lambda: StreamTranslator("m", NAME).feed(doc),
    ):
        with pytest.raises(ApiError) as info:
            attempt()
        assert info.value.status == 400 and info.value.code == "content_filter"
        assert "SAFETY" in info.value.message


def error_json(code: int, status: str, message: str, details: list[Any] | None = None) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return orjson.dumps({"error": error})


KEY_INVALID = error_json(
    400,
    "INVALID_ARGUMENT",
    "API key not valid. Please pass a valid API key.",
    [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}],
)


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected"),
    [
        (400, KEY_INVALID, {}, (502, "upstream_auth_failed", None)),
        (403, error_json(403, "PERMISSION_DENIED", "no"), {}, (502, "upstream_auth_failed", None)),
        (
            429,
            error_json(
                429,
                "RESOURCE_EXHAUSTED",
                "quota",
                [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37.5s"}],
            ),
            {},
            (429, "rate_limit_exceeded", 37.5),
        ),
        (
            429,
            b"[" + error_json(429, "RESOURCE_EXHAUSTED", "quota") + b"]",
            {"Retry-After": "3"},
            (429, "rate_limit_exceeded", 3.0),
        ),
        (
            400,
            error_json(400, "INVALID_ARGUMENT", "bad field"),
            {},
            (400, "invalid_argument", None),
        ),
        (
            404,
            error_json(404, "NOT_FOUND", "models/x is not found"),
            {},
            (404, "model_not_found", None),
        ),
        (500, error_json(500, "INTERNAL", "boom"), {}, (502, "upstream_error", None)),
        (
            503,
            error_json(503, "UNAVAILABLE", "The model is overloaded."),
            {},
            (502, "upstream_overloaded", None),
        ),
        (
            504,
            error_json(504, "DEADLINE_EXCEEDED", "Deadline expired."),
            {},
            (504, "upstream_timeout", None),
        ),
        (502, b"<html>bad gateway</html>", {}, (502, "upstream_error", None)),
    ],
)
def test_error_mapping(
    status: int, body: bytes, headers: dict[str, str], expected: tuple[int, str, float | None]
) -> None:
    error = error_from_status(NAME, status, body, headers)
    assert (error.status, error.code, error.retry_after) == expected
    if error.code == "upstream_auth_failed":
        assert "API key not valid" not in error.message


def test_urls_and_model_names() -> None:
    assert (
        api_root("https://generativelanguage.googleapis.com/")
        == "https://generativelanguage.googleapis.com/v1beta"
    )
    assert api_root("http://localhost:8080/v1") == "http://localhost:8080/v1"
    assert model_path("gemini-2.5-flash") == "models/gemini-2.5-flash"
    assert model_path("models/gemini-2.5-flash") == "models/gemini-2.5-flash"
    assert model_path("tunedModels/my-model-1") == "tunedModels/my-model-1"
    for hostile in ("../files", "gemini:generateContent?key=x", "a/b", "x#y", "..", " gemini"):
        with pytest.raises(InvalidRequest):
            model_path(hostile)


def test_from_env() -> None:
    timeouts = Timeouts()
    assert from_env({}, timeouts, 8) is None
    assert from_env({"OPENAI_API_KEY": "x"}, timeouts, 8) is None
    provider = from_env({"GOOGLE_API_KEY": "g", "GEMINI_API_KEY": "k"}, timeouts, 8)
    assert provider is not None and provider.name == NAME == "gemini"
    assert provider._config.api_key == "k" and provider._headers["x-goog-api-key"] == "k"
    assert provider._root == "https://generativelanguage.googleapis.com/v1beta"
    assert tuple(provider.models()) == DEFAULT_MODELS and BARE_PATTERNS == ("gemini-*",)
    assert "k" not in repr(provider._config).replace("timeouts", "")
    fallback = from_env({"GOOGLE_API_KEY": "g", "JETTY_GEMINI_MODELS": "a, b"}, timeouts, 8)
    assert (
        fallback is not None and fallback._config.api_key == "g" and fallback.models() == ("a", "b")
    )
    keyless = from_env({"GOOGLE_GEMINI_BASE_URL": "http://127.0.0.1:9/"}, timeouts, 8)
    assert keyless is not None and "x-goog-api-key" not in keyless._headers
    assert keyless._root == "http://127.0.0.1:9/v1beta"


# --- the adapter against the fake upstream ---------------------------------------------


@pytest.fixture(scope="module")
async def fake() -> AsyncIterator[FakeGemini]:
    upstream = FakeGemini(api_key=KEY)
    await upstream.start()
    yield upstream
    await upstream.stop()


@pytest.fixture
async def gemini(fake: FakeGemini) -> AsyncIterator[GeminiProvider]:
    fake.reset()
    provider = GeminiProvider(
        GeminiConfig(
            base_url=fake.base_url,
            api_key=KEY,
            timeouts=Timeouts(connect=2.0, first_byte=5.0, read=5.0),
        )
    )
    await provider.start()
    yield provider
    await provider.aclose()


async def test_complete(gemini: GeminiProvider, fake: FakeGemini) -> None:
    fake.script(
        "gemini-2.5-flash", Script(text="Bonjour <à> & vous", thoughts_tokens=12, cached_tokens=4)
    )
    body = chat(
        messages=[{"role": "system", "content": "Be nice."}, {"role": "user", "content": "hi"}],
        temperature=0.3,
    )
    response = await gemini.complete(upstream_call(body, model="gemini-2.5-flash"))
    assert response.choices[0].message.content == "Bonjour <à> & vous"
    assert response.choices[0].finish_reason == "stop" and response.model == "gemini-2.5-flash"
    usage = response.usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.counts() == {"reasoning_tokens": 12}
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.counts() == {"cached_tokens": 4}
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    sent = fake.requests[-1]
    assert sent.path == "/v1beta/models/gemini-2.5-flash:generateContent" and sent.query == {}
    assert sent.headers["x-goog-api-key"] == KEY and "key" not in sent.query
    assert sent.body["systemInstruction"] == {"parts": [{"text": "Be nice."}]}
    assert sent.body["generationConfig"] == {"temperature": 0.3}


@pytest.mark.parametrize("crlf", [True, False])
async def test_stream(gemini: GeminiProvider, fake: FakeGemini, crlf: bool) -> None:
    fake.script(
        "gemini-2.5-flash", Script(text="alpha beta gamma delta", crlf=crlf, thoughts_tokens=5)
    )
    chunks = await collect(gemini.stream(upstream_call(chat(stream=True))))
    assert fake.requests[-1].path.endswith(":streamGenerateContent")
    assert fake.requests[-1].query == {"alt": "sse"}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks[:-1]].count("stop") == 1
    assert chunks[-2].choices[0].finish_reason == "stop"
    acc = accumulate(chunks)
    assert acc.response_record().content == "alpha beta gamma delta"
    assert chunks[-1].choices == [] and acc.usage is not None
    assert acc.usage.completion_tokens == 4 + 5  # candidates + thoughts, reported once
    assert sum(1 for c in chunks if c.usage is not None) == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_multi_turn_tools_with_gemini_3_signatures(
    gemini: GeminiProvider, fake: FakeGemini, stream: bool
) -> None:
    model = "gemini-3-pro-preview"
    fake.script(
        model,
        Script(tool_calls=[("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})]),
    )
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris and Rome?"}]
    body = {"model": model, "messages": messages, "tools": [WEATHER], "stream": stream}
    if stream:
        chunks = await collect(gemini.stream(upstream_call(body)))
        calls = [t for c in chunks for ch in c.choices for t in ch.delta.tool_calls or ()]
        assert chunks[-2].choices[0].finish_reason == "tool_calls"
        tool_calls = [
            {
                "id": t.id,
                "type": "function",
                "function": t.function.model_dump() if t.function else {},
                **(t.model_extra or {}),
            }
            for t in calls
        ]
    else:
        response = await gemini.complete(upstream_call(body))
        assert response.choices[0].finish_reason == "tool_calls"
        tool_calls = [t.model_dump() for t in response.choices[0].message.tool_calls or ()]
    assert [orjson.loads(t["function"]["arguments"]) for t in tool_calls] == [
        {"city": "Paris"},
        {"city": "Rome"},
    ]
    assert len({t["id"] for t in tool_calls}) == 2
    signature = tool_calls[0]["extra_content"]["google"]["thought_signature"]
    assert signature in fake.signatures and "extra_content" not in tool_calls[1]
    assert fake.requests[-1].body["tools"] == [{"functionDeclarations": [WEATHER_DECL]}]

    # The client runs the tools and sends the history back, as the OpenAI SDK would.
    fake.script(model, Script(text="Paris 21°C, Rome 25°C."))
    messages += [
        {"role": "assistant", "content": None, "tool_calls": tool_calls},
        {"role": "tool", "tool_call_id": tool_calls[1]["id"], "content": '{"temp": 25}'},
        {"role": "tool", "tool_call_id": tool_calls[0]["id"], "content": "21°C"},
    ]
    response = await gemini.complete(upstream_call({**body, "stream": False}))
    assert response.choices[0].message.content == "Paris 21°C, Rome 25°C."
    contents = fake.requests[-1].body["contents"]
    assert contents[1]["parts"][0]["thoughtSignature"] == signature
    assert [p["functionResponse"]["response"] for p in contents[2]["parts"]] == [
        {"temp": 25},
        {"output": "21°C"},
    ]

    # Without the signature (a client that dropped extra_content) the skip value passes.
    for call in tool_calls:
        call.pop("extra_content", None)
    await gemini.complete(upstream_call({**body, "stream": False}))
    assert fake.requests[-1].body["contents"][1]["parts"][0]["thoughtSignature"] == SKIP_SIGNATURE


async def test_function_call_ids_from_newer_models(
    gemini: GeminiProvider, fake: FakeGemini
) -> None:
    fake.script("gemini-3-flash-preview", Script(tool_calls=[("f", {})], call_ids=True))
    response = await gemini.complete(upstream_call(chat("gemini-3-flash-preview", tools=[WEATHER])))
    calls = response.choices[0].message.tool_calls or []
    assert len(calls) == 1 and calls[0].id and not calls[0].id.startswith("call_")


async def test_images_and_json_mode(gemini: GeminiProvider, fake: FakeGemini) -> None:
    fake.script("gemini-2.5-flash", Script(text='{"animal": "cat"}'))
    content = [
        {"type": "text", "text": "What animal?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.webp"}},
    ]
    schema = {
        "type": "object",
        "properties": {"animal": {"type": "string"}},
        "additionalProperties": False,
    }
    body = {
        "model": "gemini-2.5-flash",
        "messages": [{"role": "user", "content": content}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    }
    response = await gemini.complete(upstream_call(body))
    assert orjson.loads(response.choices[0].message.content or "") == {"animal": "cat"}
    sent = fake.requests[-1].body
    assert sent["contents"][0]["parts"][1:] == [
        {"inlineData": {"mimeType": "image/png", "data": PNG}},
        {"fileData": {"fileUri": "https://example.com/cat.webp", "mimeType": "image/webp"}},
    ]
    assert sent["generationConfig"]["responseSchema"] == {
        "type": "OBJECT",
        "properties": {"animal": {"type": "STRING"}},
    }


@pytest.mark.parametrize(
    ("native", "expected"), [("MAX_TOKENS", "length"), ("SAFETY", "content_filter")]
)
@pytest.mark.parametrize("stream", [False, True])
async def test_scripted_finish_reasons(
    gemini: GeminiProvider, fake: FakeGemini, native: str, expected: str, stream: bool
) -> None:
    fake.script("gemini-2.5-flash", Script(text="cut short", finish_reason=native))
    call = upstream_call(chat(stream=stream, max_tokens=2))
    if stream:
        record = accumulate(await collect(gemini.stream(call))).response_record()
        assert record.finish_reason == expected
    else:
        response = await gemini.complete(call)
        assert response.choices[0].finish_reason == expected


async def test_n_candidates(gemini: GeminiProvider) -> None:
    call = upstream_call(chat(n=2, stream=True))
    record = accumulate(await collect(gemini.stream(call))).response_record()
    assert [c.index for c in record.choices] == [0, 1]
    assert {c.finish_reason for c in record.choices} == {"stop"}


@pytest.mark.parametrize("stream", [False, True])
async def test_missing_usage(gemini: GeminiProvider, stream: bool) -> None:
    call = upstream_call(chat("gemini-fake-no-usage", stream=stream))
    if stream:
        chunks = await collect(gemini.stream(call))
        assert all(c.usage is None for c in chunks) and chunks[-1].choices
        assert accumulate(chunks).response_record().content
    else:
        response = await gemini.complete(call)
        assert response.usage is None and response.choices[0].message.content


async def attempt(provider: GeminiProvider, model: str, stream: bool, **extra: Any) -> ApiError:
    call = upstream_call(chat(model, stream=stream, **extra))
    with pytest.raises(ApiError) as info:
        if stream:
            await collect(provider.stream(call))
        else:
            await provider.complete(call)
    return info.value


@pytest.mark.parametrize("stream", [False, True])
async def test_errors_end_to_end(gemini: GeminiProvider, fake: FakeGemini, stream: bool) -> None:
    limited = await attempt(gemini, "gemini-fake-429", stream)
    assert isinstance(limited, RateLimited) and limited.retry_after == 7
    fake.script(
        "header-429", Script(status=429, error_status="RESOURCE_EXHAUSTED", retry_after="11")
    )
    assert (await attempt(gemini, "header-429", stream)).retry_after == 11

    for model, status, code in [
        ("gemini-fake-500", 502, "upstream_error"),
        ("gemini-fake-503", 502, "upstream_overloaded"),
        ("gemini-fake-504", 504, "upstream_timeout"),
    ]:
        error = await attempt(gemini, model, stream)
        assert (error.status, error.code) == (status, code)

    blocked = await attempt(gemini, "gemini-fake-blocked", stream)
    assert blocked.status == 400 and blocked.code == "content_filter"

    # The fake validates like the real API; its 400s reach the client verbatim.
    invalid = await attempt(
        gemini,
        "gemini-2.5-flash",
        stream,
        stop=["a", "b"],
        response_format={"type": "json_object"},
        tools=[{"type": "function", "function": {"name": "bad name!"}}],
    )
    assert invalid.status == 400 and invalid.code == "invalid_argument"
    assert "Invalid function name" in invalid.message

    fake.script(
        "gone",
        Script(
            status=404,
            error_status="NOT_FOUND",
            error_message="models/gone is not found for API version v1beta",
        ),
    )
    missing = await attempt(gemini, "gone", stream)
    assert missing.status == 404 and missing.code == "model_not_found"

    hostile = await attempt(gemini, "gemini-2.5-flash:generateContent?key=x", stream)
    assert hostile.status == 400 and hostile.param == "model"


@pytest.mark.parametrize("api_key", ["AIzaSy-wrong-key-abcdefghijkl", None])
async def test_rejected_key_is_a_502_without_the_key(fake: FakeGemini, api_key: str | None) -> None:
    provider = GeminiProvider(GeminiConfig(base_url=fake.base_url, api_key=api_key))
    try:
        error = await attempt(provider, "gemini-2.5-flash", stream=False)
    finally:
        await provider.aclose()
    assert error.status == 502 and error.code == "upstream_auth_failed"
    assert "abcdefghijkl" not in error.message and "API key not valid" not in error.message
    assert "abcdefghijkl" not in repr(provider._config)


async def test_unreachable_upstream() -> None:
    provider = GeminiProvider(GeminiConfig(base_url=f"http://127.0.0.1:{free_port()}", api_key=KEY))
    try:
        error = await attempt(provider, "gemini-2.5-flash", stream=True)
    finally:
        await provider.aclose()
    assert error.status == 502 and error.code == "upstream_unreachable"


async def test_first_byte_timeout(fake: FakeGemini) -> None:
    fake.script("slow", Script(first_byte_delay=1.0))
    provider = GeminiProvider(
        GeminiConfig(
            base_url=fake.base_url, api_key=KEY, timeouts=Timeouts(first_byte=0.2, read=5.0)
        )
    )
    try:
        error = await attempt(provider, "slow", stream=False)
    finally:
        await provider.aclose()
    assert isinstance(error, UpstreamTimeout) and error.status == 504


async def test_read_timeout_mid_stream(fake: FakeGemini) -> None:
    fake.script("stalls", Script(text="a b c d", chunk_delay=1.0))
    provider = GeminiProvider(
        GeminiConfig(
            base_url=fake.base_url, api_key=KEY, timeouts=Timeouts(first_byte=5.0, read=0.2)
        )
    )
    received: list[ChatChunk] = []
    try:
        with pytest.raises(UpstreamTimeout):
            async for chunk in provider.stream(upstream_call(chat("stalls", stream=True))):
                received.append(chunk)
    finally:
        await provider.aclose()
    assert received


async def test_cut_stream(gemini: GeminiProvider) -> None:
    received: list[ChatChunk] = []
    with pytest.raises(UpstreamError) as info:
        async for chunk in gemini.stream(upstream_call(chat("gemini-fake-cut", stream=True))):
            received.append(chunk)
    assert info.value.status == 502 and info.value.code == "upstream_stream_interrupted"
    assert accumulate(received).response_record().content == "one two three"


async def test_error_event_in_stream(gemini: GeminiProvider) -> None:
    received: list[ChatChunk] = []
    with pytest.raises(ApiError) as info:
        async for chunk in gemini.stream(
            upstream_call(chat("gemini-fake-stream-error", stream=True))
        ):
            received.append(chunk)
    assert info.value.status == 502 and info.value.code == "internal"
    assert "An internal error has occurred" in info.value.message
    assert accumulate(received).response_record().content == "one two"


async def test_leaving_a_stream_closes_the_upstream_request(
    gemini: GeminiProvider, fake: FakeGemini
) -> None:
    fake.script("long", Script(text="word " * 50, chunk_delay=0.05))
    async with aclosing(gemini.stream(upstream_call(chat("long", stream=True)))) as chunks:
        async for _ in chunks:
            break
    await asyncio.wait_for(fake.disconnected.wait(), 1.0)
    assert fake.disconnects[-1][0] == "long"


# --- the fake itself is as strict as the real API ----------------------------------------


async def test_fake_rejects_what_gemini_rejects(fake: FakeGemini) -> None:
    import aiohttp

    url = f"{fake.base_url}/v1beta/models/gemini-3-pro-preview:generateContent"
    call = {"functionCall": {"name": "f", "args": {}}}
    cases = [
        (
            {"contents": [user("hi")], "generationConfig": {"temprature": 1}},
            "Unknown name \"temprature\" at 'generation_config'",
        ),
        ({"contents": []}, "contents is not specified"),
        ({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}, "valid role"),
        (
            {"contents": [{"role": "model", "parts": [call]}]},
            "function call turn comes immediately after",
        ),
        (
            {
                "contents": [
                    user("hi"),
                    {"role": "model", "parts": [call, call]},
                    {
                        "role": "user",
                        "parts": [{"functionResponse": {"name": "f", "response": {}}}],
                    },
                ]
            },
            "number of function response parts",
        ),
        (
            {"contents": [user("hi"), {"role": "model", "parts": [call]}]},
            "missing a thought_signature",
        ),
        (
            {
                "contents": [user("hi")],
                "tools": [
                    {
                        "functionDeclarations": [
                            {"name": "f", "parameters": {"type": "object", "properties": {}}}
                        ]
                    }
                ],
            },
            "should be non-empty for OBJECT type",
        ),
        (
            {
                "contents": [user("hi")],
                "tools": [
                    {
                        "functionDeclarations": [
                            {
                                "name": "f",
                                "parameters": {
                                    "type": "OBJECT",
                                    "properties": {"a": {"type": "STRING"}},
                                    "additionalProperties": False,
                                },
                            }
                        ]
                    }
                ],
            },
            'Unknown name "additionalProperties"',
        ),
    ]
    async with aiohttp.ClientSession() as session:
        for body, message in cases:
            async with session.post(url, json=body, headers={"x-goog-api-key": KEY}) as response:
                error = (await response.json())["error"]
            assert response.status == 400 and error["status"] == "INVALID_ARGUMENT", body
            assert message in error["message"], (body, error["message"])
        async with session.post(url, json={"contents": [user("hi")]}) as response:
            assert (
                response.status == 403
                and (await response.json())["error"]["status"] == "PERMISSION_DENIED"
            )


async def test_fake_stream_framing(fake: FakeGemini) -> None:
    import aiohttp

    fake.script("frames", Script(text="a <b>", words_per_chunk=1))
    url = f"{fake.base_url}/v1beta/models/frames:streamGenerateContent?alt=sse"
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url, json={"contents": [user("hi")]}, headers={"x-goog-api-key": KEY}
        ) as response,
    ):
        raw = await response.read()
    assert response.headers["Content-Type"] == "text/event-stream"
    events = raw.split(b"\r\n\r\n")
    assert events[-1] == b"" and all(e.startswith(b"data: {") for e in events[:-1])
    assert b'"role": "model"},"index": 0}' in raw and b"\\u003cb\\u003e" in raw
    assert b"[DONE]" not in raw and google_json({"a": [1, 2]}) == b'{"a": [1,2]}'
    decoder = SSEDecoder()
    docs = [orjson.loads(e.data) for e in decoder.feed(raw)]
    assert docs[-1]["candidates"][0]["finishReason"] == "STOP" and "usageMetadata" in docs[0]
