"""``POST /v1/messages``: the Anthropic Messages API in and out, through the whole stack.

The official ``anthropic`` SDK (and, for the claude-code replay and the exact SSE
framing, plain HTTP) talks to the gateway; behind it the proxy calls a local fake of
the Anthropic API (``claude-*`` models), a fake of the OpenAI API (``openai/…``) or
the built-in mock (``mock/echo``). Every call is checked as recorded.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import orjson
import pytest

from jetty_cli.testing import StackFactory, TestStack
from services.gateway.ingress.anthropic import (
    StreamTranslator,
    error_type,
    message_from_completion,
    usage_from,
)
from services.gateway.ingress.anthropic_translate import (
    MessagesRequest,
    header_betas,
    parse_request,
    to_openai,
)
from services.gateway.middleware import error_response
from shared.errors import ApiError, InvalidRequest, RateLimited, UpstreamError
from shared.openai_chat import parse_chat_request
from tests.fakes import claude_code_request
from tests.fakes.anthropic_upstream import DEFAULT_TEXT, SIGNATURE, FakeAnthropic, Script
from tests.fakes.openai_upstream import FakeUpstream
from tests.helpers import fetch_trajectory

ANTHROPIC_KEY, OPENAI_KEY = "sk-ant-ingress-1", "sk-openai-ingress-1"
MODEL = "claude-sonnet-4-6"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32).decode()


@pytest.fixture(scope="module")
async def fakes() -> AsyncIterator[tuple[FakeAnthropic, FakeUpstream]]:
    upstream_anthropic, upstream_openai = (
        FakeAnthropic(api_key=ANTHROPIC_KEY),
        FakeUpstream(api_key=OPENAI_KEY),
    )
    await upstream_anthropic.start()
    await upstream_openai.start()
    yield upstream_anthropic, upstream_openai
    await upstream_anthropic.stop()
    await upstream_openai.stop()


@pytest.fixture(scope="module")
def gw(stack_factory: StackFactory, fakes: tuple[FakeAnthropic, FakeUpstream]) -> TestStack:
    return stack_factory(
        env={
            "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
            "ANTHROPIC_BASE_URL": fakes[0].base_url,
            "OPENAI_API_KEY": OPENAI_KEY,
            "OPENAI_BASE_URL": fakes[1].base_url,
        }
    )


@pytest.fixture
def fake(fakes: tuple[FakeAnthropic, FakeUpstream]) -> FakeAnthropic:
    fakes[0].reset()
    return fakes[0]


@pytest.fixture
def fake_openai(fakes: tuple[FakeAnthropic, FakeUpstream]) -> FakeUpstream:
    fakes[1].reset()
    return fakes[1]


@pytest.fixture
async def client(gw: TestStack) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=gw.base_url, api_key=gw.token, max_retries=0) as c:
        yield c


async def _recorded_ok(
    stack: TestStack, trajectory_id: str | None, provider: str, usage: Any
) -> dict[str, Any]:
    assert trajectory_id is not None and trajectory_id.startswith("tr_")
    trajectory = await fetch_trajectory(stack, trajectory_id)
    assert trajectory["status"] == "completed"
    step = trajectory["steps"][0]
    assert step["provider"] == provider
    assert step["ingress"] == "anthropic.messages"
    prompt = usage.input_tokens + (usage.cache_read_input_tokens or 0)
    prompt += usage.cache_creation_input_tokens or 0
    assert trajectory["usage"]["prompt_tokens"] == prompt
    assert trajectory["usage"]["completion_tokens"] == usage.output_tokens
    return trajectory


def _parse_sse(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Events framed exactly ``event: <type>\\ndata: <json>\\n\\n``, ``data.type == <type>``."""
    assert raw.endswith(b"\n\n"), raw[-200:]
    events = []
    for frame in raw[:-2].split(b"\n\n"):
        event_line, data_line = frame.split(b"\n")
        assert event_line.startswith(b"event: ") and data_line.startswith(b"data: "), frame
        kind = event_line.removeprefix(b"event: ").decode()
        data = orjson.loads(data_line.removeprefix(b"data: "))
        assert data["type"] == kind
        events.append((kind, data))
    return events


def _check_grammar(kinds: list[str]) -> None:
    """message_start, ping after the first block start, blocks in order, then the end."""
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    body = kinds[1:-2]
    if body:
        assert body[:2] == ["content_block_start", "ping"]
        body = [k for k in body if k != "ping"]
        assert body[0] == "content_block_start" and body[-1] == "content_block_stop"


async def _post(
    stack: TestStack, path: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    all_headers = {"x-api-key": stack.token, "anthropic-version": "2023-06-01"}
    all_headers.update(headers or {})
    async with (
        aiohttp.ClientSession() as session,
        session.post(stack.base_url + path, data=data, headers=all_headers) as response,
    ):
        return response.status, dict(response.headers), await response.read()


# --- text, both ways -----------------------------------------------------------------------


async def test_create_text_with_cached_system(
    gw: TestStack, fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake.script(MODEL, Script(cache_read_tokens=1800, cache_creation_tokens=200))
    message = await client.messages.create(
        model=MODEL,
        max_tokens=256,
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "Hello"}],
        stop_sequences=["###"],
        metadata={"user_id": "user-42"},
        # Sampling parameters left this SDK's signature; the API still takes them.
        extra_body={"temperature": 0.5},
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == DEFAULT_TEXT  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.cache_read_input_tokens == 1800
    assert message.usage.cache_creation_input_tokens == 200
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0

    sent = fake.requests[-1]
    assert sent.body["system"] == [
        {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}
    ]
    assert sent.body["max_tokens"] == 256 and sent.body["temperature"] == 0.5
    assert sent.body["stop_sequences"] == ["###"]
    assert sent.body["metadata"] == {"user_id": "user-42"}
    await _recorded_ok(gw, message._request_id, "anthropic", message.usage)


async def test_stream_text(
    gw: TestStack, fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake.script(MODEL, Script(cache_read_tokens=30))
    async with client.messages.stream(
        model=MODEL, max_tokens=256, messages=[{"role": "user", "content": "Hello"}]
    ) as stream:
        kinds = [event.type async for event in stream]
        message = await stream.get_final_message()
        trajectory_id = stream.request_id
    assert message.content[0].text == DEFAULT_TEXT  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.usage.cache_read_input_tokens == 30 and message.usage.output_tokens > 0
    assert "text" in kinds and kinds[-1] == "message_stop"
    assert fake.requests[-1].body["stream"] is True
    await _recorded_ok(gw, trajectory_id, "anthropic", message.usage)


async def test_stream_framing_is_exact(gw: TestStack, fake: FakeAnthropic) -> None:
    body = {
        "model": MODEL,
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "Hello"}],
    }
    status, headers, raw = await _post(gw, "/v1/messages", body)
    assert status == 200, raw
    assert headers["Content-Type"].startswith("text/event-stream")
    assert headers["X-Jetty-Trajectory-Id"] == headers["request-id"]
    events = _parse_sse(raw)
    _check_grammar([kind for kind, _ in events])
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert set(start["usage"]) >= {
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    }
    assert b'event: ping\ndata: {"type": "ping"}\n\n' in raw
    deltas = [d["delta"]["text"] for k, d in events if k == "content_block_delta"]
    assert "".join(deltas) == DEFAULT_TEXT
    end = events[-2][1]
    assert end["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert end["usage"]["output_tokens"] > 0 and end["usage"]["input_tokens"] > 0


# --- tools, thinking, images, system placement ------------------------------------------------

WRITE_TOOL = {
    "name": "Write",
    "description": "Write a file",
    "input_schema": {
        "type": "object",
        "properties": {"file_path": {"type": "string"}, "content": {"type": "string"}},
        "required": ["file_path", "content"],
    },
    "cache_control": {"type": "ephemeral"},
}


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_use_round_trip(
    gw: TestStack, fake: FakeAnthropic, client: anthropic.AsyncAnthropic, stream: bool
) -> None:
    arguments = '{"file_path": "/abs/hello.txt", "content": "hi"}'
    fake.script(MODEL, Script(tool_calls=[("Write", arguments)], preface="On it."))
    messages: list[Any] = [{"role": "user", "content": "Write hello.txt"}]
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 1024,
        "tools": [WRITE_TOOL],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    }
    if stream:
        async with client.messages.stream(messages=messages, **kwargs) as s:
            first = await s.get_final_message()
    else:
        first = await client.messages.create(messages=messages, **kwargs)
    assert first.stop_reason == "tool_use"
    assert [b.type for b in first.content] == ["text", "tool_use"]
    call = first.content[1]
    assert call.type == "tool_use" and call.name == "Write"
    assert call.input == {"file_path": "/abs/hello.txt", "content": "hi"}
    sent = fake.requests[-1].body
    assert sent["tools"][0]["input_schema"] == WRITE_TOOL["input_schema"]
    assert sent["tools"][0]["cache_control"] == {"type": "ephemeral"}
    assert sent["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}

    fake.script(MODEL, Script(text="Done."))
    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": call.id, "content": "File created"},
                {"type": "text", "text": "Thanks"},
            ],
        },
    ]
    second = await client.messages.create(messages=messages, **kwargs)
    assert second.stop_reason == "end_turn"
    assert second.content[0].text == "Done."  # type: ignore[union-attr]
    turns = fake.requests[-1].body["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert turns[1]["content"][-1] == {
        "type": "tool_use",
        "id": call.id,
        "name": "Write",
        "input": {"file_path": "/abs/hello.txt", "content": "hi"},
    }
    assert turns[2]["content"] == [
        {"type": "tool_result", "tool_use_id": call.id, "content": "File created"},
        {"type": "text", "text": "Thanks"},
    ]


async def test_mid_conversation_system_message(
    gw: TestStack, fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    messages: Any = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "system", "content": "From now on answer in French."},
        {"role": "user", "content": "How are you?"},
    ]
    message = await client.messages.create(model=MODEL, max_tokens=64, messages=messages)
    assert message.content[0].text == DEFAULT_TEXT  # type: ignore[union-attr]
    turns = fake.requests[-1].body["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    texts = [b["text"] for b in turns[2]["content"]]
    assert "From now on answer in French." in texts[0] and texts[1] == "How are you?"
    assert "system" not in fake.requests[-1].body  # stays where it was said
    # Another upstream takes it as an OpenAI system message at the same place.
    echoed = await client.messages.create(model="mock/echo", max_tokens=64, messages=messages)
    assert echoed.content[0].text == "You said: How are you?"  # type: ignore[union-attr]


async def test_images_base64_and_url(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    await client.messages.create(
        model=MODEL,
        max_tokens=64,
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                    },
                    {
                        "type": "image",
                        "source": {"type": "url", "url": "https://example.com/cat.jpg"},
                    },
                    {"type": "text", "text": "What are these?"},
                ],
            }
        ],
    )
    blocks = fake.requests[-1].body["messages"][0]["content"]
    assert blocks == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "text", "text": "What are these?"},
    ]


@pytest.mark.parametrize("stream", [False, True])
async def test_thinking_out_and_back(
    gw: TestStack, fake: FakeAnthropic, client: anthropic.AsyncAnthropic, stream: bool
) -> None:
    fake.script(MODEL, Script(thinking="Greet back.", text="Hello there!", thinking_tokens=5))
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 4096,
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "messages": [{"role": "user", "content": "Hi"}],
    }
    if stream:
        async with client.messages.stream(**kwargs) as s:
            kinds = [e.delta.type async for e in s if e.type == "content_block_delta"]
            message = await s.get_final_message()
        assert {"thinking_delta", "signature_delta", "text_delta"} <= set(kinds)
    else:
        message = await client.messages.create(**kwargs)
    assert [b.type for b in message.content] == ["thinking", "text"]
    thinking = message.content[0]
    assert thinking.type == "thinking"
    assert thinking.thinking == "Greet back." and thinking.signature == SIGNATURE
    assert message.usage.output_tokens_details is not None
    assert message.usage.output_tokens_details.thinking_tokens == 5
    assert fake.requests[-1].body["thinking"] == {"type": "enabled", "budget_tokens": 2048}

    # The signed block goes back to Anthropic as it came.
    kwargs["messages"] = [
        *kwargs["messages"],
        {"role": "assistant", "content": [b.model_dump() for b in message.content]},
        {"role": "user", "content": "And?"},
    ]
    await client.messages.create(**kwargs)
    replayed = fake.requests[-1].body["messages"][1]["content"]
    assert replayed[0] == {"type": "thinking", "thinking": "Greet back.", "signature": SIGNATURE}


async def test_betas_and_native_fields_forwarded(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    betas = ["context-management-2025-06-27", "jetty-unknown-beta-2099-01-01"]
    await client.beta.messages.create(
        model=MODEL,
        max_tokens=64,
        messages=[{"role": "user", "content": "Hi"}],
        betas=betas,  # type: ignore[arg-type]
        context_management={"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        extra_body={"top_k": 5, "some_future_field": {"x": 1}},
    )
    sent = fake.requests[-1]
    assert sent.path == "/v1/messages"
    assert sent.headers["anthropic-beta"] == ",".join(betas)
    assert sent.body["top_k"] == 5
    assert sent.body["context_management"]["edits"][0]["keep"] == "all"
    assert "some_future_field" not in sent.body  # tolerated, not forwarded


# --- other upstreams ---------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_mock_upstream(gw: TestStack, client: anthropic.AsyncAnthropic, stream: bool) -> None:
    kwargs: dict[str, Any] = {
        "model": "mock/echo",
        "max_tokens": 64,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "ping pong"}]}],
    }
    if stream:
        async with client.messages.stream(**kwargs) as s:
            message = await s.get_final_message()
            trajectory_id = s.request_id
    else:
        message = await client.messages.create(**kwargs)
        trajectory_id = message._request_id
    assert message.content[0].text == "You said: ping pong"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn" and message.model == "mock/echo"
    await _recorded_ok(gw, trajectory_id, "mock", message.usage)


async def test_mock_tool_call_and_max_tokens(client: anthropic.AsyncAnthropic) -> None:
    tools: Any = [WRITE_TOOL]
    forced = await client.messages.create(
        model="mock/echo",
        max_tokens=64,
        tools=tools,
        tool_choice={"type": "tool", "name": "Write"},
        messages=[{"role": "user", "content": "write"}],
    )
    assert forced.stop_reason == "tool_use"
    assert forced.content[0].type == "tool_use" and forced.content[0].name == "Write"
    cut = await client.messages.create(
        model="mock/echo", max_tokens=1, messages=[{"role": "user", "content": "a b c d e f"}]
    )
    assert cut.stop_reason == "max_tokens"


async def test_openai_upstream_gets_no_anthropic_only_fields(
    gw: TestStack, fake_openai: FakeUpstream, tmp_path: Path
) -> None:
    """A claude-code request served by an OpenAI model: the fake rejects any field
    the real API does not know, so Anthropic-only extras must not leak."""
    request = claude_code_request.build(model="openai/gpt-4o-mini")
    headers = {**request["headers"], "x-api-key": gw.token}
    status, _, raw = await _post(gw, request["path"], request["body"], headers)
    assert status == 200, raw
    events = _parse_sse(raw)
    _check_grammar([kind for kind, _ in events])
    text = "".join(d["delta"].get("text", "") for k, d in events if k == "content_block_delta")
    assert text == DEFAULT_TEXT
    sent = fake_openai.requests[-1].body
    assert sent["model"] == "gpt-4o-mini" and len(sent["tools"]) == 24
    assert not {"thinking", "context_management", "anthropic_beta", "output_config"} & set(sent)
    roles = [m["role"] for m in sent["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "system", "user"]


# --- errors ------------------------------------------------------------------------------------


async def test_missing_max_tokens_is_anthropic_400(
    gw: TestStack, client: anthropic.AsyncAnthropic
) -> None:
    status, _, raw = await _post(
        gw, "/v1/messages", {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
    )
    assert status == 400
    assert orjson.loads(raw) == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
    }
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.messages.create(
            model=MODEL,
            max_tokens=10,
            messages=[{"role": "user", "content": [{"type": "text"}]}],  # type: ignore[typeddict-item]
        )
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "messages.0.content.0.text.text" in caught.value.message


async def test_bad_json_and_bad_block(gw: TestStack) -> None:
    status, _, raw = await _post(gw, "/v1/messages", b"{not json")
    assert status == 400 and orjson.loads(raw)["error"]["type"] == "invalid_request_error"
    body = {
        "model": MODEL,
        "max_tokens": 5,
        "messages": [
            {"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "n", "input": {}}]}
        ],
    }
    status, _, raw = await _post(gw, "/v1/messages", body)
    assert status == 400
    assert orjson.loads(raw)["error"]["message"].startswith("messages.0.content.0:")


async def test_unknown_model_is_404(gw: TestStack, client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        await client.messages.create(
            model="nosuchprovider/model", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.body["type"] == "error"  # type: ignore[index]
    assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    trajectory_id = caught.value.response.headers["X-Jetty-Trajectory-Id"]
    assert caught.value.body["request_id"] == trajectory_id  # type: ignore[index]


async def test_bad_token_is_anthropic_401(gw: TestStack) -> None:
    async with anthropic.AsyncAnthropic(
        base_url=gw.base_url, api_key="not-a-token", max_retries=0
    ) as bad:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await bad.messages.create(
                model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "x"}]
            )
    assert caught.value.body == {  # type: ignore[comparison-overlap]
        "type": "error",
        "error": {"type": "authentication_error", "message": "Invalid API token."},
    }
    status, _, raw = await _post(gw, "/v1/messages/count_tokens", {}, {"x-api-key": ""})
    assert status == 401 and "x-api-key" in orjson.loads(raw)["error"]["message"]
    # Other routes keep the OpenAI shape.
    status, _, raw = await _post(gw, "/v1/chat/completions", {}, {"x-api-key": "nope"})
    assert status == 401 and orjson.loads(raw)["error"]["type"] == "authentication_error"
    assert "type" not in orjson.loads(raw)


async def test_wrong_method_under_the_prefix(gw: TestStack) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(gw.base_url + "/v1/messages", headers={"x-api-key": gw.token}) as response,
    ):
        assert response.status == 405
        body = await response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"


async def test_upstream_error_status_and_shape(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake.script(
        MODEL,
        Script(status=400, error_type="invalid_request_error", error_message="prompt is too long"),
    )
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.messages.create(
            model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert "prompt is too long" in caught.value.message


async def test_error_mid_stream_is_an_error_event(
    gw: TestStack, fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake.script(
        MODEL,
        Script(
            text="one two three four",
            error_after=2,
            error_type="overloaded_error",
            error_message="Overloaded",
        ),
    )
    with pytest.raises(anthropic.APIStatusError) as caught:
        async with client.messages.stream(
            model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "x"}]
        ) as s:
            async for _ in s:
                pass
    assert caught.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    body = {
        "model": MODEL,
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "x"}],
    }
    status, _, raw = await _post(gw, "/v1/messages", body)
    assert status == 200
    events = _parse_sse(raw)
    assert events[-1][0] == "error" and "message_stop" not in [k for k, _ in events]
    assert events[-1][1]["error"]["type"] == "overloaded_error"


# --- count_tokens and the claude-code replay ---------------------------------------------------


async def test_count_tokens(client: anthropic.AsyncAnthropic) -> None:
    counted = await client.messages.count_tokens(
        model=MODEL,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hello " * 100}],
        tools=[WRITE_TOOL],  # type: ignore[list-item]
    )
    assert 150 < counted.input_tokens < 400
    with pytest.raises(anthropic.BadRequestError):
        await client.messages.count_tokens(model=MODEL, messages=[])


async def test_claude_code_request_replayed(
    gw: TestStack, fake: FakeAnthropic, tmp_path: Path
) -> None:
    fixture = claude_code_request.write(tmp_path / "claude-code.json")
    request = orjson.loads(fixture.read_bytes())
    assert len(orjson.dumps(request["body"])) > 70_000 and len(request["body"]["tools"]) == 24
    headers = {**request["headers"], "x-api-key": gw.token}
    status, response_headers, raw = await _post(gw, request["path"], request["body"], headers)
    assert status == 200, raw
    events = _parse_sse(raw)
    _check_grammar([kind for kind, _ in events])
    text = "".join(d["delta"].get("text", "") for k, d in events if k == "content_block_delta")
    assert text == DEFAULT_TEXT

    sent = fake.requests[-1]
    assert sent.headers["anthropic-beta"] == ",".join(claude_code_request.BETAS)
    assert sent.headers["x-api-key"] == ANTHROPIC_KEY  # ours, never the client's token
    body = sent.body
    assert body["model"] == "claude-opus-4-7" and body["max_tokens"] == 64000
    assert body["thinking"] == {"type": "adaptive"}
    assert body["output_config"] == {"effort": "high"}
    assert body["context_management"] == request["body"]["context_management"]
    assert body["metadata"] == request["body"]["metadata"]
    assert body["system"] == request["body"]["system"]
    assert [t["name"] for t in body["tools"]] == list(claude_code_request.TOOL_NAMES)
    assert [t["role"] for t in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][1]["content"][0]["signature"] == claude_code_request.SIGNATURE
    last = body["messages"][2]["content"]
    assert last[0]["type"] == "tool_result"
    assert claude_code_request.MID_SYSTEM_TEXT in last[1]["text"]
    assert last[2] == request["body"]["messages"][4]["content"][0]  # with its cache_control

    trajectory = await fetch_trajectory(gw, response_headers["X-Jetty-Trajectory-Id"])
    assert trajectory["status"] == "completed"
    assert trajectory["steps"][0]["ingress"] == "anthropic.messages"
    assert trajectory["steps"][0]["provider"] == "anthropic"


# --- pure translation, table-driven ------------------------------------------------------------

USER_HI = {"role": "user", "content": "Hi"}


def _translate(body: dict[str, Any], betas: tuple[str, ...] = (), stream: bool = False) -> Any:
    raw = orjson.dumps({"max_tokens": 100, **body})
    return to_openai(parse_request(raw, MessagesRequest), betas=list(betas), stream=stream)


REQUESTS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "text and system string",
        {"model": "mock/echo", "system": "S", "messages": [USER_HI]},
        {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]},
    ),
    (
        "cached system blocks kept for Anthropic",
        {
            "model": "claude-x",
            "system": [{"type": "text", "text": "S", "cache_control": {"type": "ephemeral"}}],
            "messages": [USER_HI],
        },
        {
            "messages": [
                {
                    "role": "system",
                    "content": [
                        {"type": "text", "text": "S", "cache_control": {"type": "ephemeral"}}
                    ],
                },
                {"role": "user", "content": "Hi"},
            ]
        },
    ),
    (
        "cache_control dropped for another provider",
        {
            "model": "openai/gpt-4o",
            "system": [{"type": "text", "text": "S", "cache_control": {"type": "ephemeral"}}],
            "messages": [USER_HI],
        },
        {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]},
    ),
    (
        "mid-conversation system message stays in place",
        {
            "model": "mock/echo",
            "messages": [
                USER_HI,
                {"role": "assistant", "content": "Yo"},
                {"role": "system", "content": [{"type": "text", "text": "Now French."}]},
                {"role": "user", "content": "Ça va?"},
            ],
        },
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Yo"},
                {"role": "system", "content": "Now French."},
                {"role": "user", "content": "Ça va?"},
            ]
        },
    ),
    (
        "tool round trip: tool results before the rest of the turn",
        {
            "model": "mock/echo",
            "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
            "messages": [
                USER_HI,
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "also"},
                        {"type": "tool_result", "tool_use_id": "t1", "content": "ok"},
                    ],
                },
            ],
        },
        {
            "tools": [
                {
                    "type": "function",
                    "function": {"name": "f", "parameters": {"type": "object"}, "description": "d"},
                }
            ],
            "tool_choice": "required",
            "parallel_tool_calls": False,
            "messages": [
                {"role": "user", "content": "Hi"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "t1",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"a":1}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "t1", "content": "ok"},
                {"role": "user", "content": "also"},
            ],
        },
    ),
    (
        "named tool choice and a server tool as given",
        {
            "model": "claude-x",
            "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 2}],
            "tool_choice": {"type": "tool", "name": "web_search"},
            "messages": [USER_HI],
        },
        {
            "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 2}],
            "tool_choice": {"type": "function", "function": {"name": "web_search"}},
        },
    ),
    (
        "images: base64 to a data URL, url as is; a tool result's image moves for OpenAI",
        {
            "model": "openai/gpt-4o",
            "messages": [
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t", "name": "shot", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t",
                            "content": [
                                {
                                    "type": "image",
                                    "source": {"type": "url", "url": "https://x/y.png"},
                                }
                            ],
                        },
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "QQ=="},
                        },
                    ],
                },
            ],
        },
        {
            "messages": [
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "t",
                            "type": "function",
                            "function": {"name": "shot", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "t", "content": ""},
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,QQ=="}},
                    ],
                },
            ]
        },
    ),
    (
        "a base64 PDF document becomes a file part",
        {
            "model": "claude-x",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "document",
                            "source": {
                                "type": "base64",
                                "media_type": "application/pdf",
                                "data": "JVBERi0=",
                            },
                            "cache_control": {"type": "ephemeral"},
                        }
                    ],
                }
            ],
        },
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "file",
                            "file": {
                                "filename": "document.pdf",
                                "file_data": "data:application/pdf;base64,JVBERi0=",
                            },
                            "cache_control": {"type": "ephemeral"},
                        }
                    ],
                }
            ]
        },
    ),
    (
        "thinking blocks replayed to Anthropic only",
        {
            "model": "anthropic/claude-x",
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "messages": [
                USER_HI,
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hm", "signature": "sig"},
                        {"type": "redacted_thinking", "data": "xx"},
                        {"type": "text", "text": "Yo"},
                    ],
                },
            ],
        },
        {
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "messages": [
                {"role": "user", "content": "Hi"},
                {
                    "role": "assistant",
                    "content": "Yo",
                    "thinking_blocks": [
                        {"type": "thinking", "thinking": "hm", "signature": "sig"},
                        {"type": "redacted_thinking", "data": "xx"},
                    ],
                },
            ],
        },
    ),
    (
        "parameters",
        {
            "model": "claude-x",
            "messages": [USER_HI],
            "stop_sequences": ["a", "b"],
            "temperature": 0.2,
            "top_p": 0.9,
            "top_k": 3,
            "metadata": {"user_id": "u1"},
            "output_config": {"effort": "low"},
            "service_tier": "auto",
        },
        {
            "max_tokens": 100,
            "stop": ["a", "b"],
            "temperature": 0.2,
            "top_p": 0.9,
            "top_k": 3,
            "user": "u1",
            "output_config": {"effort": "low"},
        },
    ),
    (
        "structured output becomes response_format elsewhere",
        {
            "model": "openai/gpt-4o",
            "messages": [USER_HI],
            "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
            "thinking": {"type": "adaptive"},
            "top_k": 3,
        },
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": {"type": "object"}, "strict": True},
            }
        },
    ),
]


@pytest.mark.parametrize(
    ("body", "expected"), [(b, e) for _, b, e in REQUESTS], ids=[n for n, _, _ in REQUESTS]
)
def test_request_translation(body: dict[str, Any], expected: dict[str, Any]) -> None:
    out = _translate(body)
    assert {k: out.get(k) for k in expected} == expected
    parse_chat_request(orjson.dumps(out))  # what the proxy reads must validate
    if not body["model"].startswith(("claude-", "anthropic/")):
        assert not {"thinking", "top_k", "output_config", "anthropic_beta"} & set(out)


def test_stream_and_betas_translation() -> None:
    out = _translate({"model": "claude-x", "messages": [USER_HI]}, ("b1", "b2"), stream=True)
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}
    assert out["anthropic_beta"] == ["b1", "b2"]
    assert "anthropic_beta" not in _translate({"model": "mock/echo", "messages": [USER_HI]}, ("b",))
    assert header_betas(["a, b", "b,c", " "]) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "m", "messages": [USER_HI]}, "max_tokens: Field required"),
        ({"model": "m", "max_tokens": 0, "messages": [USER_HI]}, "max_tokens: Input should be"),
        ({"model": "m", "max_tokens": 5, "messages": []}, "messages: List should have"),
        (
            {"model": "m", "max_tokens": 5, "messages": [{"role": "tool", "content": "x"}]},
            "messages.0.role: Input should be",
        ),
        (
            {"model": "m", "max_tokens": 5, "messages": [USER_HI], "temperature": 1.5},
            "temperature: Input should be less than or equal to 1",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": [{"type": "video"}]}],
            },
            "messages.0.content.0: Input tag 'video'",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [USER_HI],
                "stop_sequences": ["1", "2", "3", "4", "5"],
            },
            "stop_sequences: at most 4",
        ),
        (
            {"model": "m", "max_tokens": 5, "messages": [USER_HI], "tools": [{"name": "f"}]},
            "tools.0.custom.input_schema",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "document", "source": {"type": "text", "data": "x"}}],
                    }
                ],
            },
            "messages.0.content.0.source: only base64 PDF",
        ),
    ],
)
def test_request_errors_name_the_field(body: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        to_openai(parse_request(orjson.dumps(body), MessagesRequest), betas=[], stream=False)
    assert caught.value.message.startswith(message), caught.value.message
    assert caught.value.status == 400


def _completion(message: dict[str, Any], finish: str, usage: Any = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": "chatcmpl-1",
        "model": "m",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
    }
    if usage is not None:
        doc["usage"] = usage
    return doc


ANSWERS: list[tuple[str, dict[str, Any], list[dict[str, Any]], str]] = [
    ("text", _completion({"content": "hi"}, "stop"), [{"type": "text", "text": "hi"}], "end_turn"),
    ("cut", _completion({"content": "h"}, "length"), [{"type": "text", "text": "h"}], "max_tokens"),
    (
        "refusal",
        _completion({"content": None, "refusal": "no"}, "content_filter"),
        [{"type": "text", "text": "no"}],
        "refusal",
    ),
    (
        "tool calls, even when the provider says stop",
        _completion(
            {
                "content": None,
                "tool_calls": [
                    {"id": "c1", "function": {"name": "f", "arguments": '{"a": 1}'}},
                    {"id": "c2", "function": {"name": "g", "arguments": "not json"}},
                ],
            },
            "stop",
        ),
        [
            {"type": "tool_use", "id": "c1", "name": "f", "input": {"a": 1}},
            {"type": "tool_use", "id": "c2", "name": "g", "input": {}},
        ],
        "tool_use",
    ),
    (
        "signed thinking blocks first",
        _completion(
            {
                "content": "ok",
                "reasoning_content": "hm",
                "thinking_blocks": [
                    {"type": "thinking", "thinking": "hm", "signature": "s"},
                    {"type": "redacted_thinking", "data": "d"},
                ],
            },
            "stop",
        ),
        [
            {"type": "thinking", "thinking": "hm", "signature": "s"},
            {"type": "redacted_thinking", "data": "d"},
            {"type": "text", "text": "ok"},
        ],
        "end_turn",
    ),
    (
        "reasoning without signature",
        _completion({"content": "ok", "reasoning_content": "hm"}, "stop"),
        [{"type": "thinking", "thinking": "hm", "signature": ""}, {"type": "text", "text": "ok"}],
        "end_turn",
    ),
]


@pytest.mark.parametrize(
    ("doc", "content", "stop"), [a[1:] for a in ANSWERS], ids=[a[0] for a in ANSWERS]
)
def test_answer_translation(doc: dict[str, Any], content: list[Any], stop: str) -> None:
    message = message_from_completion(doc, "asked")
    assert message["content"] == content and message["stop_reason"] == stop
    assert message["id"].startswith("msg_") and message["model"] == "m"
    anthropic.types.Message.model_validate(message)  # the SDK's own type accepts it


def test_usage_translation() -> None:
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 60, "cache_creation_tokens": 30},
        "completion_tokens_details": {"reasoning_tokens": 4},
    }
    assert usage_from(usage) == {
        "input_tokens": 10,
        "cache_creation_input_tokens": 30,
        "cache_read_input_tokens": 60,
        "output_tokens": 7,
        "output_tokens_details": {"thinking_tokens": 4},
    }
    assert usage_from(None)["input_tokens"] == 0


def _chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> Any:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"id": "chatcmpl-1", "model": "m", "choices": choices, **extra}


def _run_stream(chunks: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    translator = StreamTranslator("asked")
    raw = b"".join(translator.feed(c) for c in chunks) + translator.finish()
    events = _parse_sse(raw)
    _check_grammar([k for k, _ in events])
    return events


def _deltas(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[int, dict[str, Any]]]:
    return [(d["index"], d["delta"]) for k, d in events if k == "content_block_delta"]


def test_stream_text_and_usage() -> None:
    usage = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
    events = _run_stream(
        [
            _chunk({"role": "assistant"}),
            _chunk({"content": "Hel"}),
            _chunk({"content": "lo"}),
            _chunk({}, "stop"),
            _chunk(None, usage=usage),
        ]
    )
    assert _deltas(events) == [
        (0, {"type": "text_delta", "text": "Hel"}),
        (0, {"type": "text_delta", "text": "lo"}),
    ]
    assert events[-2][1]["usage"]["input_tokens"] == 9
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"


def test_stream_thinking_then_parallel_tools() -> None:
    signed = {"type": "thinking", "thinking": "hm", "signature": "s"}
    call = {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}
    second = {"index": 1, "id": "c2", "function": {"name": "g", "arguments": "{}"}}
    events = _run_stream(
        [
            _chunk({"role": "assistant", "reasoning_content": "h"}),
            _chunk({"reasoning_content": "m"}),
            _chunk({"thinking_blocks": [signed]}),
            _chunk({"thinking_blocks": [{"type": "redacted_thinking", "data": "d"}]}),
            _chunk({"tool_calls": [call]}),
            _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a"'}}]}),
            _chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}),
            _chunk({"tool_calls": [second]}),
            _chunk({}, "tool_calls"),
        ]
    )
    starts = [d["content_block"] for k, d in events if k == "content_block_start"]
    assert [b["type"] for b in starts] == ["thinking", "redacted_thinking", "tool_use", "tool_use"]
    assert starts[2] == {"type": "tool_use", "id": "c1", "name": "f", "input": {}}
    assert _deltas(events) == [
        (0, {"type": "thinking_delta", "thinking": "h"}),
        (0, {"type": "thinking_delta", "thinking": "m"}),
        (0, {"type": "signature_delta", "signature": "s"}),
        (2, {"type": "input_json_delta", "partial_json": '{"a"'}),
        (2, {"type": "input_json_delta", "partial_json": ": 1}"}),
        (3, {"type": "input_json_delta", "partial_json": "{}"}),
    ]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_stream_whole_signed_block_and_empty_answer() -> None:
    signed = {"type": "thinking", "thinking": "hm", "signature": "s"}
    events = _run_stream([_chunk({"thinking_blocks": [signed]}), _chunk({}, "length")])
    assert _deltas(events) == [
        (0, {"type": "thinking_delta", "thinking": "hm"}),
        (0, {"type": "signature_delta", "signature": "s"}),
    ]
    assert events[-2][1]["delta"]["stop_reason"] == "max_tokens"
    empty = _run_stream([])
    assert [k for k, _ in empty] == ["message_start", "message_delta", "message_stop"]


def test_error_renderers_by_path_prefix() -> None:
    exc = RateLimited("slow down", retry_after=3)
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        response = error_response(exc, path)
        assert response.status == 429 and response.headers["Retry-After"] == "3"
        assert orjson.loads(response.body) == {  # type: ignore[arg-type]
            "type": "error",
            "error": {"type": "rate_limit_error", "message": "slow down"},
        }
    for path in ("/v1/messagesx", "/v1/chat/completions", None):
        body = orjson.loads(error_response(exc, path).body)  # type: ignore[arg-type]
        assert body["error"]["type"] == "rate_limit_error" and "type" not in body
    overloaded = UpstreamError("busy", code="upstream_overloaded")
    assert error_type(overloaded) == "overloaded_error"
    assert error_type(ApiError("x", status=504)) == "timeout_error"
    assert error_type(ApiError("x", status=502)) == "api_error"
