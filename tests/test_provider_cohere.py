"""The Cohere v2 adapter: request and response translation tables, the stream
translator on Cohere's documented event sequence, and end-to-end calls against the
fake Cohere server (tests/fakes/cohere_upstream.py) — text, tools, thinking, images,
errors, cut streams, stream errors, early close, missing usage."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import orjson
import pytest

from jetty_cli.procs import free_port
from services.proxy.accumulate import Accumulator
from services.proxy.providers import cohere
from services.proxy.providers.base import ChatChunk, UpstreamCall
from services.proxy.providers.cohere import (
    CohereConfig,
    CohereProvider,
    StreamTranslator,
    from_cohere,
    to_cohere,
    usage_from_cohere,
)
from services.proxy.providers.openai_compat import Timeouts
from shared.errors import ApiError, InvalidRequest, RateLimited, UpstreamError, UpstreamTimeout
from shared.openai_chat import parse_chat_request
from tests.fakes.cohere_upstream import CohereScript, FakeCohere

KEY = "co-provider-key-0123456789abcdef"
PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    },
    {"type": "function", "function": {"name": "get_time"}},
]


def call_for(body: dict[str, Any]) -> UpstreamCall:
    raw = orjson.dumps(body)
    request = parse_chat_request(raw)
    model = request.model.removeprefix("cohere/")
    return UpstreamCall(model=model, request=request, body=raw)


def chat(
    model: str = "command-a-03-2025", text: str = "hello there", **extra: Any
) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def accumulate(chunks: list[ChatChunk]) -> Accumulator:
    acc = Accumulator()
    for chunk in chunks:
        acc.add_chunk(chunk)
    return acc


# --- request translation -----------------------------------------------------------------

TOOL_TURNS = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [
            {
                "id": "get_weather_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "get_weather_1", "content": "18C, sunny"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "get_time_2",
                "type": "function",
                "function": {"name": "get_time", "arguments": "{}"},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "get_time_2", "content": [{"type": "text", "text": "noon"}]},
]

REQUEST_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "text",
        {"messages": [{"role": "user", "content": "hi"}]},
        {"messages": [{"role": "user", "content": "hi"}]},
    ),
    (
        "system placement, including mid-conversation",
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "Hello."},
                {"role": "developer", "content": [{"type": "text", "text": "Now be formal."}]},
                {"role": "user", "content": "and again"},
            ]
        },
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "Hello."},
                {"role": "system", "content": "Now be formal."},
                {"role": "user", "content": "and again"},
            ]
        },
    ),
    (
        "multi-turn tools: text beside tool calls becomes tool_plan",
        {"messages": TOOL_TURNS, "tools": TOOLS},
        {
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "tool_plan": "Let me check.",
                    "tool_calls": [
                        {
                            "id": "get_weather_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "get_weather_1", "content": "18C, sunny"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "get_time_2",
                            "type": "function",
                            "function": {"name": "get_time", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "get_time_2", "content": "noon"},
            ],
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "description": "Weather for a city",
                        "parameters": {
                            "type": "object",
                            "properties": {"city": {"type": "string"}},
                        },
                    },
                },
                {
                    "type": "function",
                    "function": {
                        "name": "get_time",
                        "parameters": {"type": "object", "properties": {}},
                    },
                },
            ],
        },
    ),
    (
        "images by URL and base64 data URL",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Compare"},
                        {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}},
                        {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
                    ],
                }
            ]
        },
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Compare"},
                        {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}},
                        {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
                    ],
                }
            ]
        },
    ),
    (
        "JSON mode",
        {"response_format": {"type": "json_object"}},
        {"response_format": {"type": "json_object"}},
    ),
    (
        "structured output: json_schema becomes json_object with the schema",
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "city", "strict": True, "schema": {"type": "object"}},
            }
        },
        {"response_format": {"type": "json_object", "json_schema": {"type": "object"}}},
    ),
    ("text response_format is the default", {"response_format": {"type": "text"}}, {}),
    (
        "sampling parameters; p and penalties clamped into Cohere's ranges",
        {
            "temperature": 0.7,
            "top_p": 1.0,
            "seed": 42,
            "stop": "END",
            "max_tokens": 50,
            "max_completion_tokens": 64,
            "frequency_penalty": -1.5,
            "presence_penalty": 1.7,
        },
        {
            "temperature": 0.7,
            "p": 0.99,
            "seed": 42,
            "stop_sequences": ["END"],
            "max_tokens": 64,
            "frequency_penalty": 0.0,
            "presence_penalty": 1.0,
        },
    ),
    (
        "top_p 0 is Cohere's minimum",
        {"top_p": 0, "stop": ["a", "b"]},
        {"p": 0.01, "stop_sequences": ["a", "b"]},
    ),
    (
        "OpenAI-only parameters are dropped",
        {
            "n": 1,
            "user": "u-1",
            "logprobs": True,
            "top_logprobs": 2,
            "logit_bias": {"1": 2},
            "parallel_tool_calls": False,
            "reasoning_effort": "low",
            "metadata": {"k": "v"},
            "store": True,
            "stream_options": {"include_usage": True},
            "jetty": {"task": "t"},
        },
        {},
    ),
    ("tool_choice none", {"tools": TOOLS[:1], "tool_choice": "none"}, {"tool_choice": "NONE"}),
    (
        "tool_choice required",
        {"tools": TOOLS[:1], "tool_choice": "required"},
        {"tool_choice": "REQUIRED"},
    ),
    ("tool_choice auto is the default", {"tools": TOOLS[:1], "tool_choice": "auto"}, {}),
    (
        "a named function narrows the tools and requires a call",
        {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
        {
            "tool_choice": "REQUIRED",
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "get_time",
                        "parameters": {"type": "object", "properties": {}},
                    },
                }
            ],
        },
    ),
    (
        "strict functions turn on strict_tools",
        {
            "tools": [
                {
                    "type": "function",
                    "function": {"name": "f", "strict": True, "parameters": {"type": "object"}},
                }
            ]
        },
        {
            "strict_tools": True,
            "tools": [
                {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
            ],
        },
    ),
]


@pytest.mark.parametrize(
    ("case", "fields", "expected"), REQUEST_CASES, ids=[c[0] for c in REQUEST_CASES]
)
def test_request_translation(case: str, fields: dict[str, Any], expected: dict[str, Any]) -> None:
    body = {"model": "cohere/command-a-03-2025", **chat(), **fields}
    body["model"] = "cohere/command-a-03-2025"
    translated = to_cohere(call_for(body), stream=False)
    want = {"model": "command-a-03-2025", "messages": chat()["messages"], **expected}
    if "tools" in fields and "tools" not in expected:
        want["tools"] = translated["tools"]
    assert translated == want


def test_stream_flag() -> None:
    assert to_cohere(call_for(chat()), stream=True)["stream"] is True
    assert "stream" not in to_cohere(call_for(chat(stream=True)), stream=False)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages[0].role"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}
                        ],
                    }
                ]
            },
            "messages[0].content",
        ),
        (
            {
                "messages": [
                    {
                        "role": "system",
                        "content": [{"type": "image_url", "image_url": {"url": PNG}}],
                    }
                ]
            },
            "messages[0].content",
        ),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0]"),
        ({"response_format": {"type": "grammar"}}, "response_format.type"),
    ],
)
def test_untranslatable_requests_are_400(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        to_cohere(call_for({**chat(), **fields}), stream=False)
    assert info.value.status == 400 and info.value.param == param


# --- response translation ----------------------------------------------------------------

USAGE = {
    "billed_units": {"input_tokens": 9.0, "output_tokens": 30.0},
    "tokens": {"input_tokens": 215.0, "output_tokens": 31.0},
    "cached_tokens": 128.0,
}

RESPONSE_CASES: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    (
        "text",
        {"content": [{"type": "text", "text": "Hi!"}]},
        {"content": "Hi!"},
        "COMPLETE",
    ),
    (
        "stop sequence",
        {"content": [{"type": "text", "text": "Hi"}]},
        {"content": "Hi"},
        "STOP_SEQUENCE",
    ),
    (
        "max tokens",
        {"content": [{"type": "text", "text": "Hi th"}]},
        {"content": "Hi th"},
        "MAX_TOKENS",
    ),
    (
        "tool call with its plan as content",
        {
            "tool_plan": "I will check the weather.",
            "tool_calls": [
                {
                    "id": "get_weather_x1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {
            "content": "I will check the weather.",
            "tool_calls": [
                {
                    "id": "get_weather_x1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        "TOOL_CALL",
    ),
    (
        "thinking becomes reasoning_content",
        {
            "content": [
                {"type": "thinking", "thinking": "The user greets me."},
                {"type": "text", "text": "Hello!"},
            ]
        },
        {"content": "Hello!", "reasoning_content": "The user greets me."},
        "COMPLETE",
    ),
]

FINISH = {
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "MAX_TOKENS": "length",
    "TOOL_CALL": "tool_calls",
}


@pytest.mark.parametrize(
    ("case", "message", "expected", "reason"), RESPONSE_CASES, ids=[c[0] for c in RESPONSE_CASES]
)
def test_response_translation(
    case: str, message: dict[str, Any], expected: dict[str, Any], reason: str
) -> None:
    doc = {
        "id": "c0ffee",
        "message": {"role": "assistant", **message},
        "finish_reason": reason,
        "usage": USAGE,
    }
    response = from_cohere(doc, "command-a-03-2025")
    assert response.id == "c0ffee" and response.model == "command-a-03-2025"
    (choice,) = response.choices
    assert choice.finish_reason == FINISH[reason]
    assert choice.message.model_dump(exclude_none=True) == {"role": "assistant", **expected}


def test_usage_mapping() -> None:
    usage = usage_from_cohere(USAGE)
    assert usage is not None
    assert usage.model_dump() == {
        "prompt_tokens": 215,
        "completion_tokens": 31,
        "total_tokens": 246,
        "prompt_tokens_details": {"cached_tokens": 128, "billed_tokens": 9},
        "completion_tokens_details": {"billed_tokens": 30},
    }
    billed_only = usage_from_cohere({"billed_units": {"input_tokens": 3, "output_tokens": 4}})
    assert billed_only is not None and billed_only.total_tokens == 7
    assert usage_from_cohere(None) is None and usage_from_cohere({}) is None


@pytest.mark.parametrize(
    ("reason", "error", "status"), [("ERROR", "boom", 502), ("TIMEOUT", None, 504)]
)
def test_failed_generation_is_an_error(reason: str, error: str | None, status: int) -> None:
    doc = {"id": "x", "message": {"role": "assistant"}, "finish_reason": reason, "error": error}
    with pytest.raises(ApiError) as info:
        from_cohere(doc, "command-a-03-2025")
    assert info.value.status == status


def test_stream_translator_on_the_documented_tool_sequence() -> None:
    # The event sequence of Cohere's "Streaming for tool use" page (two parallel calls).
    events: list[dict[str, Any]] = [
        {"type": "message-start", "id": "fba98ad3", "delta": {"message": {"role": "assistant"}}},
        {"type": "tool-plan-delta", "delta": {"message": {"tool_plan": "I will search"}}},
        {"type": "tool-plan-delta", "delta": {"message": {"tool_plan": " for the weather."}}},
    ]
    for index, (ident, city) in enumerate(
        [("get_weather_p1", "Madrid"), ("get_weather_a2", "Brasilia")]
    ):
        call = {
            "id": ident,
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        }
        events.append(
            {"type": "tool-call-start", "index": index, "delta": {"message": {"tool_calls": call}}}
        )
        for piece in ['{\n    "', "location", '": "', city, '"\n}']:
            fragment = {"function": {"arguments": piece}}
            events.append(
                {
                    "type": "tool-call-delta",
                    "index": index,
                    "delta": {"message": {"tool_calls": fragment}},
                }
            )
        events.append({"type": "tool-call-end", "index": index})
    events.append(
        {
            "type": "message-end",
            "id": None,
            "delta": {
                "finish_reason": "TOOL_CALL",
                "usage": {
                    "billed_units": {"input_tokens": 37.0, "output_tokens": 28.0},
                    "tokens": {"input_tokens": 913.0, "output_tokens": 83.0},
                },
            },
        }
    )
    translator = StreamTranslator("command-a-03-2025")
    chunks = [chunk for event in events for chunk in translator.event(event["type"], event)]
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].id == "fba98ad3"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 913 and chunks[-1].usage.completion_tokens == 83
    record = accumulate(chunks).response_record()
    assert record.content == "I will search for the weather."
    assert record.finish_reason == "tool_calls"
    assert [(t.id, t.name, orjson.loads(t.arguments)) for t in record.tool_calls] == [
        ("get_weather_p1", "get_weather", {"location": "Madrid"}),
        ("get_weather_a2", "get_weather", {"location": "Brasilia"}),
    ]
    assert translator.finished
    assert translator.event("content-delta", {"type": "content-delta"}) == []


def test_stream_translator_error_end() -> None:
    translator = StreamTranslator("m")
    translator.event("message-start", {"type": "message-start", "id": "x"})
    with pytest.raises(UpstreamError) as info:
        translator.event(
            "message-end",
            {"type": "message-end", "delta": {"finish_reason": "ERROR", "error": "overloaded"}},
        )
    assert info.value.status == 502 and "overloaded" in info.value.message


# --- configuration -----------------------------------------------------------------------


def test_from_env() -> None:
    timeouts = Timeouts()
    assert cohere.from_env({}, timeouts, 8) is None
    provider = cohere.from_env({"CO_API_KEY": "k1"}, timeouts, 8)
    assert provider is not None and provider._url == "https://api.cohere.com/v2/chat"
    assert list(provider.models()) == list(cohere.DEFAULT_MODELS)
    provider = cohere.from_env(
        {
            "COHERE_API_KEY": "k2",
            "CO_API_KEY": "k1",
            "COHERE_BASE_URL": "https://cohere.internal.test/v2/",
            "JETTY_COHERE_MODELS": "command-a-03-2025, c4ai-aya-expanse-32b",
        },
        timeouts,
        8,
    )
    assert provider is not None and provider._url == "https://cohere.internal.test/v2/chat"
    assert provider._headers["Authorization"] == "Bearer k2"
    assert list(provider.models()) == ["command-a-03-2025", "c4ai-aya-expanse-32b"]
    assert "k2" not in repr(provider._config)
    assert cohere.NAME == "cohere" and cohere.BARE_PATTERNS == ("command-*", "c4ai-*")
    for bad in ("ftp://x", "https://user:pw@x.test", "https://x.test/?a=1", "not a url"):
        with pytest.raises(ValueError):
            cohere.from_env({"COHERE_API_KEY": "k", "COHERE_BASE_URL": bad}, timeouts, 8)


# --- end to end against the fake Cohere ----------------------------------------------------


@pytest.fixture(scope="module")
async def fake() -> AsyncIterator[FakeCohere]:
    upstream = FakeCohere(api_key=KEY)
    await upstream.start()
    yield upstream
    await upstream.stop()


def provider_for(fake: FakeCohere, key: str = KEY, **timeouts: float) -> CohereProvider:
    return CohereProvider(
        CohereConfig(
            base_url=fake.base_url,
            api_key=key,
            timeouts=Timeouts(**{"connect": 2.0, "first_byte": 5.0, "read": 5.0, **timeouts}),
        )
    )


@pytest.fixture
async def provider(fake: FakeCohere) -> AsyncIterator[CohereProvider]:
    fake.reset()
    adapter = provider_for(fake)
    await adapter.start()
    yield adapter
    await adapter.aclose()


async def collect(stream: AsyncIterator[ChatChunk]) -> list[ChatChunk]:
    return [chunk async for chunk in stream]


async def test_complete_text(provider: CohereProvider, fake: FakeCohere) -> None:
    fake.script("command-a-03-2025", CohereScript(text="Bonjour !", cached_tokens=12))
    response = await provider.complete(call_for(chat(temperature=0.2, top_p=1)))
    assert response.choices[0].message.content == "Bonjour !"
    assert response.choices[0].finish_reason == "stop"
    assert response.usage is not None and response.usage.prompt_tokens > 200
    assert response.usage.prompt_tokens_details is not None
    assert response.usage.prompt_tokens_details.counts()["cached_tokens"] == 12
    sent = fake.requests[-1]
    assert sent.path == "/v2/chat"
    assert sent.headers["Authorization"] == f"Bearer {KEY}"
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.body == {
        "model": "command-a-03-2025",
        "messages": [{"role": "user", "content": "hello there"}],
        "temperature": 0.2,
        "p": 0.99,
    }


async def test_stream_text(provider: CohereProvider, fake: FakeCohere) -> None:
    fake.script("command-a-03-2025", CohereScript(text="alpha beta gamma", done_marker=True))
    chunks = await collect(provider.stream(call_for(chat(stream=True))))
    assert fake.requests[-1].body["stream"] is True
    assert fake.requests[-1].headers["Accept"] == "text/event-stream"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].delta.content for c in chunks[1:4]] == ["alpha", " beta", " gamma"]
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    acc = accumulate(chunks)
    assert acc.response_record().content == "alpha beta gamma"
    assert acc.upstream_id == chunks[0].id and len(acc.upstream_id) == 36


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_call_round_trip(
    provider: CohereProvider, fake: FakeCohere, stream: bool
) -> None:
    body = chat("fake-tools", tools=TOOLS, tool_choice="required", stream=stream)
    if stream:
        record = accumulate(await collect(provider.stream(call_for(body)))).response_record()
    else:
        acc = Accumulator()
        acc.add_response(await provider.complete(call_for(body)))
        record = acc.response_record()
    assert fake.requests[-1].body["tool_choice"] == "REQUIRED"
    assert record.finish_reason == "tool_calls"
    assert record.content == "I will look up the weather in Paris."
    (tool,) = record.tool_calls
    assert tool.name == "get_weather" and tool.id and tool.id.startswith("get_weather_")
    assert orjson.loads(tool.arguments) == {"city": "Paris", "unit": "celsius"}

    # The next turn sends the call and its result back; the fake checks they pair up.
    follow_up = {
        "model": "command-a-03-2025",
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": record.content,
                "tool_calls": [
                    {
                        "id": tool.id,
                        "type": "function",
                        "function": {"name": tool.name, "arguments": tool.arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": tool.id, "content": '{"temp": 18}'},
        ],
        "tools": TOOLS,
    }
    answer = await provider.complete(call_for(follow_up))
    assert answer.choices[0].message.content
    assert fake.requests[-1].body["messages"][1]["tool_plan"] == record.content


async def test_images_and_mid_conversation_system_reach_cohere(
    provider: CohereProvider, fake: FakeCohere
) -> None:
    body = {
        "model": "command-a-vision-07-2025",
        "messages": [
            {"role": "system", "content": "Describe images."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": PNG}},
                ],
            },
            {"role": "assistant", "content": "A pixel."},
            {"role": "system", "content": "Answer in French from now on."},
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "https://x.test/b.png"}}],
            },
        ],
    }
    response = await provider.complete(call_for(body))
    assert response.choices[0].message.content
    sent = fake.requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "system", "user"]
    assert sent[1]["content"][1] == {"type": "image_url", "image_url": {"url": PNG}}


async def test_thinking_stream(provider: CohereProvider, fake: FakeCohere) -> None:
    fake.script(
        "command-a-reasoning-08-2025",
        CohereScript(thinking="They said hello.", text="Hi there", finish_reason="MAX_TOKENS"),
    )
    body = chat("command-a-reasoning-08-2025", stream=True, max_tokens=3)
    chunks = await collect(provider.stream(call_for(body)))
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content", "")
        for c in chunks
        if c.choices
    )
    assert reasoning == "They said hello."
    record = accumulate(chunks).response_record()
    assert record.content == "Hi there" and record.finish_reason == "length"


async def test_json_mode_reaches_cohere(provider: CohereProvider, fake: FakeCohere) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    body = chat(
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    )
    await provider.complete(call_for(body))
    assert fake.requests[-1].body["response_format"] == {
        "type": "json_object",
        "json_schema": schema,
    }


async def attempt(provider: CohereProvider, body: dict[str, Any], stream: bool) -> ApiError:
    with pytest.raises(ApiError) as info:
        if stream:
            await collect(provider.stream(call_for(body)))
        else:
            await provider.complete(call_for(body))
    return info.value


@pytest.mark.parametrize("stream", [False, True])
async def test_error_mapping(provider: CohereProvider, fake: FakeCohere, stream: bool) -> None:
    limited = await attempt(provider, chat("fake-429"), stream)
    assert isinstance(limited, RateLimited) and limited.retry_after == 7
    assert "per minute request limit" in limited.message

    failed = await attempt(provider, chat("fake-500"), stream)
    assert isinstance(failed, UpstreamError) and failed.status == 502

    # The fake refuses what the real API refuses; the client sees Cohere's message.
    invalid = await attempt(
        provider, chat(tools=TOOLS, response_format={"type": "json_object"}), stream
    )
    assert invalid.status == 400
    assert invalid.message == "invalid request: response_format is not supported with tools"

    fake.script("blocked", CohereScript(status=498, error_message="blocked token in prompt"))
    blocked = await attempt(provider, chat("blocked"), stream)
    assert blocked.status == 400 and blocked.code == "content_filter"

    fake.script("gone", CohereScript(status=404, error_message="model 'gone' not found"))
    missing = await attempt(provider, chat("gone"), stream)
    assert missing.status == 404 and "not found" in missing.message


async def test_rejected_key_is_a_502_without_the_key(fake: FakeCohere) -> None:
    wrong = "co-wrong-key-abcdefghijklmnop"
    adapter = provider_for(fake, key=wrong)
    try:
        error = await attempt(adapter, chat(), stream=False)
    finally:
        await adapter.aclose()
    assert error.status == 502 and error.code == "upstream_auth_failed"
    assert "abcdefghijklmnop" not in error.message and "mnop" not in error.message


async def test_cut_stream(provider: CohereProvider) -> None:
    received: list[ChatChunk] = []
    with pytest.raises(UpstreamError) as info:
        async for chunk in provider.stream(call_for(chat("fake-cut", stream=True))):
            received.append(chunk)
    assert info.value.code == "upstream_stream_interrupted"
    assert accumulate(received).response_record().content == "one two"


async def test_error_at_message_end(provider: CohereProvider) -> None:
    received: list[ChatChunk] = []
    with pytest.raises(UpstreamError) as info:
        async for chunk in provider.stream(call_for(chat("fake-stream-error", stream=True))):
            received.append(chunk)
    assert info.value.status == 502 and "model overloaded" in info.value.message
    assert accumulate(received).response_record().content == "one two three four"
    nonstream = await attempt(provider, chat("fake-stream-error"), stream=False)
    assert nonstream.status == 502


@pytest.mark.parametrize("stream", [False, True])
async def test_missing_usage(provider: CohereProvider, stream: bool) -> None:
    if stream:
        chunks = await collect(provider.stream(call_for(chat("fake-no-usage", stream=True))))
        assert all(c.usage is None for c in chunks)
        assert accumulate(chunks).response_record().finish_reason == "stop"
    else:
        response = await provider.complete(call_for(chat("fake-no-usage")))
        assert response.usage is None and response.choices[0].message.content


async def test_leaving_a_stream_closes_the_upstream_request(
    provider: CohereProvider, fake: FakeCohere
) -> None:
    fake.script("long", CohereScript(text="word " * 50, chunk_delay=0.05))
    async with aclosing(provider.stream(call_for(chat("long", stream=True)))) as chunks:
        async for _ in chunks:
            break
    await asyncio.wait_for(fake.disconnected.wait(), 1.0)
    assert fake.disconnects[-1][0] == "long"


async def test_timeouts(fake: FakeCohere) -> None:
    fake.script("slow", CohereScript(first_byte_delay=1.0))
    adapter = provider_for(fake, first_byte=0.2)
    try:
        error = await attempt(adapter, chat("slow"), stream=False)
    finally:
        await adapter.aclose()
    assert isinstance(error, UpstreamTimeout) and error.status == 504

    fake.script("stalls", CohereScript(text="a b c d", chunk_delay=1.0))
    adapter = provider_for(fake, read=0.2)
    received: list[ChatChunk] = []
    try:
        with pytest.raises(UpstreamTimeout):
            async for chunk in adapter.stream(call_for(chat("stalls", stream=True))):
                received.append(chunk)
    finally:
        await adapter.aclose()
    assert received


async def test_unreachable_upstream() -> None:
    adapter = CohereProvider(CohereConfig(base_url=f"http://127.0.0.1:{free_port()}", api_key=KEY))
    try:
        error = await attempt(adapter, chat(), stream=True)
    finally:
        await adapter.aclose()
    assert error.status == 502 and error.code == "upstream_unreachable"
