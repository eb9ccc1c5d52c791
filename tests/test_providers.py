"""Provider adapters on their own: the built-in mock, and the OpenAI-compatible
adapter against the fake upstream (tests/fakes/openai_upstream.py) — text, tools,
streams, error mapping, timeouts, cut streams, missing usage — plus the SSE decoder."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import orjson
import pytest

from jetty_cli.procs import free_port
from services.proxy import estimate
from services.proxy.accumulate import Accumulator
from services.proxy.providers.base import ChatChunk, ChatResponse, UpstreamCall
from services.proxy.providers.mock import MockProvider
from services.proxy.providers.openai_compat import (
    OpenAICompatConfig,
    OpenAICompatProvider,
    Timeouts,
)
from services.proxy.providers.sse import SSEDecoder, SSEEvent
from shared.errors import ApiError, RateLimited, UpstreamError, UpstreamTimeout
from shared.openai_chat import parse_chat_request
from tests.fakes.openai_upstream import FakeUpstream, Script

KEY = "sk-provider-key-0123456789"


def upstream_call(body: dict[str, Any], model: str | None = None) -> UpstreamCall:
    raw = orjson.dumps(body)
    request = parse_chat_request(raw)
    return UpstreamCall(model=model or request.model, request=request, body=raw)


def chat(model: str, text: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


async def collect(stream: AsyncIterator[ChatChunk]) -> list[ChatChunk]:
    return [chunk async for chunk in stream]


def accumulate(chunks: list[ChatChunk]) -> Accumulator:
    acc = Accumulator()
    for chunk in chunks:
        acc.add_chunk(chunk)
    return acc


# --- SSE decoding ------------------------------------------------------------------------


def test_sse_split_anywhere() -> None:
    wire = (
        b": keep-alive comment\r\n\r\n"
        b'data: {"a":1}\r\n\r\n'
        b"event: message_start\ndata: line one\ndata:line two\n\n"
        b"data: [DONE]\r\r"
    )
    expected = [
        SSEEvent("message", b'{"a":1}'),
        SSEEvent("message_start", b"line one\nline two"),
        SSEEvent("message", b"[DONE]"),
    ]
    for cut in range(len(wire) + 1):
        decoder = SSEDecoder()
        got = decoder.feed(wire[:cut]) + decoder.feed(wire[cut:]) + decoder.end()
        assert got == expected, cut
        assert not decoder.pending
    decoder = SSEDecoder()
    assert [e for b in wire for e in decoder.feed(bytes([b]))] + decoder.end() == expected


def test_sse_unfinished_event_is_pending() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"partial"') == []
    assert decoder.pending


# --- the mock provider -----------------------------------------------------------------


async def test_mock_complete_echoes_with_usage() -> None:
    call = upstream_call(chat("mock/echo", "What is the capital of France?"))
    response = await MockProvider().complete(call)
    choice = response.choices[0]
    assert choice.message.content == "You said: What is the capital of France?"
    assert choice.finish_reason == "stop"
    assert response.model == "mock/echo"
    assert response.usage is not None
    assert response.usage.prompt_tokens == estimate.prompt_tokens(call.request)
    assert response.usage.completion_tokens == estimate.text_tokens(choice.message.content)
    assert response.usage.total_tokens == (
        response.usage.prompt_tokens + response.usage.completion_tokens
    )


async def test_mock_stream_matches_complete() -> None:
    call = upstream_call(chat("mock/echo", "one two three four five six seven"))
    provider = MockProvider()
    chunks = await collect(provider.stream(call))
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) >= 3
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    acc = accumulate(chunks)
    record = acc.response_record()
    complete = await provider.complete(call)
    assert record.content == complete.choices[0].message.content
    assert record.finish_reason == "stop"
    assert complete.usage is not None and acc.usage is not None
    assert acc.usage.completion_tokens == complete.usage.completion_tokens


async def test_mock_n_and_max_tokens() -> None:
    call = upstream_call(chat("mock/x", "a long message " * 10, n=3, max_tokens=2))
    response = await MockProvider().complete(call)
    assert [c.index for c in response.choices] == [0, 1, 2]
    for choice in response.choices:
        assert choice.finish_reason == "length"
        assert choice.message.content == "You said: a long message"[:8]
    assert response.usage is not None and response.usage.completion_tokens == 3 * 2
    acc = accumulate(await collect(MockProvider().stream(call)))
    record = acc.response_record()
    assert len(record.choices) == 3
    assert {c.finish_reason for c in record.choices} == {"length"}


TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        ("required", "get_weather"),
        ({"type": "function", "function": {"name": "get_time"}}, "get_time"),
        ("auto", None),
    ],
)
async def test_mock_tools(tool_choice: Any, expected: str | None) -> None:
    call = upstream_call(chat("mock/echo", tools=TOOLS, tool_choice=tool_choice))
    provider = MockProvider()
    response = await provider.complete(call)
    message = response.choices[0].message
    streamed = accumulate(await collect(provider.stream(call))).response_record()
    if expected is None:
        assert message.tool_calls is None and message.content
        assert streamed.tool_calls == []
        return
    assert response.choices[0].finish_reason == "tool_calls"
    assert message.content is None and message.tool_calls is not None
    assert message.tool_calls[0].function.name == expected
    assert message.tool_calls[0].function.arguments == "{}"
    assert streamed.finish_reason == "tool_calls" and streamed.content is None
    assert [(t.name, t.arguments) for t in streamed.tool_calls] == [(expected, "{}")]


# --- the OpenAI-compatible provider against the fake upstream ----------------------------


@pytest.fixture(scope="module")
async def fake() -> AsyncIterator[FakeUpstream]:
    upstream = FakeUpstream(api_key=KEY)
    await upstream.start()
    yield upstream
    await upstream.stop()


@pytest.fixture
async def openai(fake: FakeUpstream) -> AsyncIterator[OpenAICompatProvider]:
    fake.reset()
    provider = OpenAICompatProvider(
        OpenAICompatConfig(
            base_url=fake.base_url,
            api_key=KEY,
            models=("gpt-4o",),
            timeouts=Timeouts(connect=2.0, first_byte=5.0, read=5.0),
        )
    )
    await provider.start()
    yield provider
    await provider.aclose()


async def test_complete_forwards_body(openai: OpenAICompatProvider, fake: FakeUpstream) -> None:
    body = chat(
        "openai/gpt-4o",
        temperature=0.5,
        parallel_tool_calls=False,
        metadata={"k": "v"},
        jetty={"task": "summarise"},
    )
    response = await openai.complete(upstream_call(body, model="gpt-4o"))
    assert isinstance(response, ChatResponse)
    assert response.choices[0].message.content == "Hello! How can I help you today?"
    assert response.usage is not None and response.usage.total_tokens > 0
    assert response.model_extra and response.model_extra["system_fingerprint"] == "fp_fake0001"
    sent = fake.requests[-1]
    assert sent.headers["Authorization"] == f"Bearer {KEY}"
    assert "jetty" not in sent.body
    assert sent.body["model"] == "gpt-4o"
    assert sent.body["parallel_tool_calls"] is False and sent.body["metadata"] == {"k": "v"}
    assert sent.body["temperature"] == 0.5
    assert "stream" not in sent.body and "stream_options" not in sent.body


async def test_stream_always_asks_for_usage(
    openai: OpenAICompatProvider, fake: FakeUpstream
) -> None:
    fake.script("gpt-4o", Script(text="alpha beta gamma delta", words_per_chunk=1))
    chunks = await collect(openai.stream(upstream_call(chat("gpt-4o", stream=True))))
    sent = fake.requests[-1].body
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    acc = accumulate(chunks)
    assert acc.response_record().content == "alpha beta gamma delta"
    assert acc.usage is not None and acc.usage.completion_tokens > 0
    assert acc.usage.prompt_tokens_details is not None
    assert acc.upstream_id is not None and acc.upstream_id.startswith("chatcmpl-")
    assert chunks[-1].choices == []


async def test_stream_tool_calls_accumulate(openai: OpenAICompatProvider) -> None:
    body = chat("fake-tools", stream=True, stream_options={"include_usage": False}, tools=TOOLS)
    record = accumulate(await collect(openai.stream(upstream_call(body)))).response_record()
    assert record.finish_reason == "tool_calls"
    assert record.content is None
    (tool,) = record.tool_calls
    assert tool.name == "get_weather" and tool.id and tool.id.startswith("call_")
    assert orjson.loads(tool.arguments) == {"city": "Paris", "unit": "celsius"}


async def test_complete_tool_calls(openai: OpenAICompatProvider) -> None:
    response = await openai.complete(upstream_call(chat("fake-tools", tools=TOOLS)))
    acc = Accumulator()
    acc.add_response(response)
    (tool,) = acc.response_record().tool_calls
    assert tool.name == "get_weather" and "Paris" in tool.arguments


@pytest.mark.parametrize("stream", [False, True])
async def test_missing_usage(openai: OpenAICompatProvider, stream: bool) -> None:
    call = upstream_call(chat("fake-no-usage", stream=stream))
    if stream:
        chunks = await collect(openai.stream(call))
        assert all(c.usage is None for c in chunks)
        assert accumulate(chunks).response_record().content
    else:
        response = await openai.complete(call)
        assert response.usage is None and response.choices[0].message.content


async def attempt(provider: OpenAICompatProvider, model: str, stream: bool) -> ApiError:
    call = upstream_call(chat(model, stream=stream))
    with pytest.raises(ApiError) as info:
        if stream:
            await collect(provider.stream(call))
        else:
            await provider.complete(call)
    return info.value


@pytest.mark.parametrize("stream", [False, True])
async def test_error_mapping(
    openai: OpenAICompatProvider, fake: FakeUpstream, stream: bool
) -> None:
    limited = await attempt(openai, "fake-429", stream)
    assert isinstance(limited, RateLimited)
    assert limited.status == 429 and limited.retry_after == 7
    assert limited.code == "rate_limit_exceeded"

    failed = await attempt(openai, "fake-500", stream)
    assert isinstance(failed, UpstreamError) and failed.status == 502

    invalid = await attempt(openai, "fake-400", stream)
    assert invalid.status == 400 and invalid.param == "temperature"
    assert invalid.message == "Invalid value for 'temperature': must be at most 2."

    fake.script("gone", Script(status=404, error_message="The model `gone` does not exist"))
    missing = await attempt(openai, "gone", stream)
    assert missing.status == 404 and "does not exist" in missing.message


async def test_rejected_key_is_a_502_without_the_key(fake: FakeUpstream) -> None:
    wrong = "sk-wrong-key-abcdefghijklmnop"
    provider = OpenAICompatProvider(OpenAICompatConfig(base_url=fake.base_url, api_key=wrong))
    try:
        error = await attempt(provider, "gpt-4o", stream=False)
    finally:
        await provider.aclose()
    assert error.status == 502 and error.code == "upstream_auth_failed"
    assert "abcdefghijklmnop" not in error.message and "mnop" not in error.message
    assert "abcdefghijklmnop" not in repr(provider._config)


async def test_unreachable_upstream() -> None:
    provider = OpenAICompatProvider(
        OpenAICompatConfig(base_url=f"http://127.0.0.1:{free_port()}/v1", api_key=KEY)
    )
    try:
        error = await attempt(provider, "gpt-4o", stream=True)
    finally:
        await provider.aclose()
    assert error.status == 502 and error.code == "upstream_unreachable"


async def test_first_byte_timeout(fake: FakeUpstream) -> None:
    fake.script("slow", Script(first_byte_delay=1.0))
    provider = OpenAICompatProvider(
        OpenAICompatConfig(
            base_url=fake.base_url, api_key=KEY, timeouts=Timeouts(first_byte=0.2, read=5.0)
        )
    )
    try:
        error = await attempt(provider, "slow", stream=False)
    finally:
        await provider.aclose()
    assert isinstance(error, UpstreamTimeout) and error.status == 504


async def test_read_timeout_mid_stream(fake: FakeUpstream) -> None:
    fake.script("stalls", Script(text="a b c d", chunk_delay=1.0))
    provider = OpenAICompatProvider(
        OpenAICompatConfig(
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
    assert received  # the stream had started before it stalled


async def test_cut_stream(openai: OpenAICompatProvider) -> None:
    received: list[ChatChunk] = []
    with pytest.raises(UpstreamError) as info:
        async for chunk in openai.stream(upstream_call(chat("fake-cut", stream=True))):
            received.append(chunk)
    assert info.value.status == 502 and info.value.code == "upstream_stream_interrupted"
    assert accumulate(received).response_record().content == "one two"


async def test_error_event_in_stream(openai: OpenAICompatProvider) -> None:
    received: list[ChatChunk] = []
    with pytest.raises(ApiError) as info:
        async for chunk in openai.stream(upstream_call(chat("fake-stream-error", stream=True))):
            received.append(chunk)
    assert info.value.status == 502
    assert info.value.message == "The server had an error while processing your request."
    assert accumulate(received).response_record().content == "one"


async def test_leaving_a_stream_closes_the_upstream_request(
    openai: OpenAICompatProvider, fake: FakeUpstream
) -> None:
    fake.script("long", Script(text="word " * 50, chunk_delay=0.05))
    async with aclosing(openai.stream(upstream_call(chat("long", stream=True)))) as chunks:
        async for _ in chunks:
            break
    await asyncio.wait_for(fake.disconnected.wait(), 1.0)
    assert fake.disconnects[-1][0] == "long"
