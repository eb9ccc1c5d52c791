"""The OpenAI Responses API ingress (``POST /v1/responses``): the official ``openai``
SDK (``responses.create`` / ``responses.stream``) and raw HTTP as codex speaks it,
against the built-in mock provider and the OpenAI-compatible fake upstream, plus
table-driven translation tests of the pure functions. Every event and Response
object is checked against OpenAI's published schemas."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import openai
import orjson
import pytest

from jetty_cli.testing import StackFactory, TestStack
from services.gateway.ingress.responses import StreamTranslator
from services.gateway.ingress.responses_objects import (
    ResponseShell,
    error_object,
    response_object,
)
from services.gateway.ingress.responses_translate import (
    decode_thinking,
    encode_thinking,
    parse_request,
    to_chat,
)
from shared.errors import ApiError, InvalidRequest, RateLimited
from tests.fakes.openai_upstream import FakeUpstream, Script
from tests.helpers import fetch_trajectory
from tests.openapi import SUBSET, validate

KEY = "sk-upstream-responses-1"
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
    "strict": False,
}


# --- helpers -----------------------------------------------------------------------------


@cache
def _event_schemas() -> dict[str, str]:
    """Stream event type → the schema that describes it (from ResponseStreamEvent)."""
    schemas = json.loads(SUBSET.read_text())["components"]["schemas"]
    out = {}
    for ref in schemas["ResponseStreamEvent"]["anyOf"]:
        name = ref["$ref"].rsplit("/", 1)[-1]
        out[schemas[name]["properties"]["type"]["enum"][0]] = name
    return out


def validate_event(event: dict[str, Any]) -> None:
    validate(_event_schemas()[event["type"]], event)


def parse_sse(raw: bytes) -> list[dict[str, Any]]:
    """Events of a Responses stream; checks the ``event:`` line matches ``type``."""
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        event = json.loads(lines["data"])
        assert lines["event"] == event["type"]
        events.append(event)
    return events


def check_stream(events: list[dict[str, Any]]) -> None:
    """The framing codex relies on: every event valid, numbered 0, 1, 2…, and the
    lifecycle in order."""
    for event in events:
        validate_event(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[-1]["type"] in ("response.completed", "response.incomplete", "response.failed")
    ids = {e["response"]["id"] for e in events if "response" in e}
    assert len(ids) == 1 and ids.pop().startswith("resp_")


async def _ingress_of(stack: TestStack, trajectory_id: str) -> str | None:
    conn = await asyncpg.connect(stack.config.database_url)
    try:
        value: str | None = await conn.fetchval(
            "SELECT ingress FROM steps WHERE trajectory_id = $1", trajectory_id
        )
        return value
    finally:
        await conn.close()


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream(api_key=KEY)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture(scope="module")
def responses_stack(stack_factory: StackFactory, upstream: FakeUpstream) -> TestStack:
    """Mock provider plus the fake OpenAI upstream behind ``gpt-*`` names."""
    return stack_factory(env={"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": upstream.base_url})


@pytest.fixture
async def client(
    responses_stack: TestStack, upstream: FakeUpstream
) -> AsyncIterator[openai.AsyncOpenAI]:
    upstream.reset()
    async with openai.AsyncOpenAI(
        base_url=responses_stack.base_url + "/v1", api_key=responses_stack.token, max_retries=0
    ) as c:
        yield c


# --- the SDK against the mock provider ---------------------------------------------------


async def test_create_text(client: openai.AsyncOpenAI, responses_stack: TestStack) -> None:
    raw = await client.responses.with_raw_response.create(
        model="mock/echo", instructions="Be brief.", input="Hello there"
    )
    document = json.loads(raw.content)
    validate("Response", document)
    response = raw.parse()
    assert response.output_text == "You said: Hello there"
    assert response.status == "completed"
    assert response.instructions == "Be brief."
    assert response.usage is not None and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    trajectory_id = raw.headers["x-jetty-trajectory-id"]
    assert response.id == "resp_" + trajectory_id.removeprefix("tr_")

    trajectory = await fetch_trajectory(responses_stack, trajectory_id)
    assert trajectory["status"] == "completed"
    step = trajectory["steps"][0]
    assert step["provider"] == "mock"
    assert step["request"]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert trajectory["usage"]["total_tokens"] == response.usage.total_tokens
    assert await _ingress_of(responses_stack, trajectory_id) == "responses"


async def test_stream_text(client: openai.AsyncOpenAI, responses_stack: TestStack) -> None:
    async with client.responses.stream(
        model="mock/echo", input=[{"role": "user", "content": "one two three four five"}]
    ) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1 and "".join(deltas) == "You said: one two three four five"
    assert final.output_text == "You said: one two three four five"
    assert final.usage is not None and final.usage.input_tokens > 0
    assert [e.sequence_number for e in events] == list(range(len(events)))
    jetty = (final.model_extra or {})["jetty_metadata"]
    trajectory = await fetch_trajectory(responses_stack, jetty["trajectory_id"])
    assert trajectory["status"] == "completed"
    assert trajectory["usage"]["total_tokens"] == final.usage.total_tokens


async def test_function_call_round_trip_with_the_mock(client: openai.AsyncOpenAI) -> None:
    first = await client.responses.create(
        model="mock/echo",
        input="What is the weather in Paris?",
        tools=[WEATHER_TOOL],
        tool_choice="required",
    )
    (call,) = first.output
    assert call.type == "function_call"
    assert call.name == "get_weather" and call.arguments == "{}" and call.call_id
    second = await client.responses.create(
        model="mock/echo",
        input=[
            {"role": "user", "content": "What is the weather in Paris?"},
            call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"},
        ],
        tools=[WEATHER_TOOL],
    )
    assert second.status == "completed" and second.output_text


async def test_max_output_tokens_makes_an_incomplete_response(client: openai.AsyncOpenAI) -> None:
    stream = await client.responses.create(
        model="mock/echo", input="a long sentence to cut short", max_output_tokens=2, stream=True
    )
    events = [event async for event in stream]
    last = events[-1]
    assert last.type == "response.incomplete"
    assert last.response.status == "incomplete"
    assert last.response.incomplete_details is not None
    assert last.response.incomplete_details.reason == "max_output_tokens"


# --- the SDK against an OpenAI-compatible upstream ---------------------------------------


async def test_stream_function_call_round_trip_upstream(
    client: openai.AsyncOpenAI, upstream: FakeUpstream, responses_stack: TestStack
) -> None:
    upstream.script("gpt-4o", Script(tool_calls=[("get_weather", '{"city": "Paris"}')]))
    async with client.responses.stream(
        model="gpt-4o",
        instructions="Use tools.",
        input="Weather in Paris?",
        tools=[WEATHER_TOOL],
        parallel_tool_calls=False,
    ) as stream:
        events = [event async for event in stream]
        first = await stream.get_final_response()
    (call,) = first.output
    assert call.type == "function_call"
    assert (call.name, call.arguments) == ("get_weather", '{"city": "Paris"}')
    arg_deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
    assert "".join(e.delta for e in arg_deltas) == '{"city": "Paris"}'
    sent = upstream.requests[-1].body
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city.",
                "parameters": WEATHER_TOOL["parameters"],
                "strict": False,
            },
        }
    ]
    assert sent["parallel_tool_calls"] is False
    assert sent["stream_options"] == {"include_usage": True}

    upstream.scripts.clear()  # the next answer is text
    async with client.responses.stream(
        model="gpt-4o",
        instructions="Use tools.",
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"},
        ],
        tools=[WEATHER_TOOL],
    ) as stream:
        second = await stream.get_final_response()
    assert second.output_text == "Hello! How can I help you today?"
    messages = upstream.requests[-1].body["messages"]
    assert messages == [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.call_id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.call_id, "content": "Sunny"},
    ]
    assert second.usage is not None
    trajectory_id = (second.model_extra or {})["jetty_metadata"]["trajectory_id"]
    trajectory = await fetch_trajectory(responses_stack, trajectory_id)
    assert trajectory["status"] == "completed"
    assert trajectory["steps"][0]["provider"] == "openai"
    assert trajectory["usage"]["prompt_tokens"] == second.usage.input_tokens
    assert trajectory["usage"]["completion_tokens"] == second.usage.output_tokens


async def test_non_stream_upstream_usage_and_parameters(
    client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    response = await client.responses.create(
        model="openai/gpt-4o-mini",
        input=[
            {"role": "developer", "content": [{"type": "input_text", "text": "Rules."}]},
            {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        ],
        max_output_tokens=64,
        temperature=0.2,
        top_p=0.9,
        text={
            "format": {
                "type": "json_schema",
                "name": "answer",
                "schema": {"type": "object", "properties": {"a": {"type": "string"}}},
                "strict": True,
            }
        },
        prompt_cache_key="session-1",
        store=False,
        metadata={"run": "7"},
    )
    assert response.output_text == "Hello! How can I help you today?"
    assert response.metadata == {"run": "7"} and response.store is False
    sent = upstream.requests[-1].body
    assert sent["model"] == "gpt-4o-mini"
    assert sent["messages"] == [
        {"role": "system", "content": "Rules."},
        {"role": "user", "content": "Hi"},
    ]
    assert sent["max_completion_tokens"] == 64
    assert (sent["temperature"], sent["top_p"]) == (0.2, 0.9)
    assert sent["prompt_cache_key"] == "session-1"
    assert sent["response_format"]["json_schema"]["name"] == "answer"
    assert "store" not in sent and "metadata" not in sent
    usage = response.usage
    assert usage is not None
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0


# --- errors ------------------------------------------------------------------------------


async def test_stateful_fields_are_refused(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(model="mock/echo", input="x", previous_response_id="resp_123")
    body = caught.value.body
    assert isinstance(body, dict) and body["param"] == "previous_response_id"
    assert "keeps no responses" in body["message"]


@pytest.mark.parametrize(
    ("input_items", "param"),
    [
        ([{"type": "unknown_item"}], "input[0].type"),
        (
            [{"type": "function_call_output", "call_id": "call_x", "output": "?"}],
            "input[0].call_id",
        ),
        (
            [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}],
            "input[0].content[0].file_id",
        ),
        ([{"role": "robot", "content": "x"}], "input[0].role"),
        ([{"type": "item_reference", "id": "msg_1"}], "input[0]"),
    ],
)
async def test_invalid_input_names_the_field(
    client: openai.AsyncOpenAI, input_items: list[Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(model="mock/echo", input=input_items)
    body = caught.value.body
    assert isinstance(body, dict) and body["param"] == param, body


async def test_upstream_errors_keep_their_status(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        await client.responses.create(model="openai/fake-429", input="x", stream=True)
    assert caught.value.response.headers["retry-after"] == "7"
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model="nobody/nothing", input="x")


async def test_error_mid_stream_is_response_failed(
    client: openai.AsyncOpenAI, responses_stack: TestStack
) -> None:
    stream = await client.responses.create(model="openai/fake-stream-error", input="x", stream=True)
    events = [event async for event in stream]
    assert events[0].type == "response.created"
    failed = events[-1]
    assert failed.type == "response.failed"
    assert failed.response.status == "failed" and failed.response.error is not None
    # the text streamed before the error is closed into a finished item
    assert failed.response.output and failed.response.output[0].type == "message"
    done = [e for e in events if e.type == "response.output_item.done"]
    assert len(done) == 1


async def test_missing_token_is_an_openai_401(responses_stack: TestStack) -> None:
    async with openai.AsyncOpenAI(
        base_url=responses_stack.base_url + "/v1", api_key="jetty-wrong", max_retries=0
    ) as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.responses.create(model="mock/echo", input="x")
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "invalid_api_key"


# --- codex over raw HTTP -----------------------------------------------------------------


def codex_body(model: str) -> dict[str, Any]:
    """A request shaped like codex-cli 0.171's (see ../shared/agent-clis.md)."""
    return {
        "model": model,
        "instructions": "You are Codex, a coding agent.",
        "input": [
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": "<permissions>sandboxed</permissions>"}],
            },
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "list the files"}],
            },
        ],
        "tools": [
            {
                "type": "function",
                "name": "exec_command",
                "description": "Runs a command.",
                "strict": False,
                "parameters": {
                    "type": "object",
                    "properties": {"cmd": {"type": "string"}},
                    "required": ["cmd"],
                    "additionalProperties": False,
                },
            },
            {
                "type": "namespace",
                "name": "mcp",
                "description": "MCP tools",
                "tools": [{"type": "function", "name": "x", "parameters": {}, "strict": False}],
            },
            {"type": "web_search", "external_web_access": False},
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "0199a6b2-5b6f-7d63-a1c4-5e0e9b0c1d2e",
    }


async def _post_and_hang_up(url: str, token: str, body: dict[str, Any]) -> tuple[int, bytes]:
    """POST over a bare socket and close it the moment ``response.completed`` has been
    read in full, as codex does; returns the status and the SSE body read."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    payload = orjson.dumps(body)
    writer.write(
        (
            f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\noriginator: codex_exec\r\nsession-id: s-1\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        ).encode()
        + payload
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"transfer-encoding: chunked" in head.lower()
    body_read = b""
    while True:  # de-chunk until the completed event is whole
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        body_read += await reader.readexactly(size)
        await reader.readexactly(2)
        tail = body_read.rsplit(b"event: ", 1)[-1]
        if tail.startswith(b"response.completed") and tail.endswith(b"\n\n"):
            break
    writer.transport.abort()  # hang up at once, as codex does
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    return status, body_read


async def test_codex_request_and_hang_up_after_completed(
    responses_stack: TestStack, upstream: FakeUpstream
) -> None:
    upstream.reset()
    upstream.script("gpt-4o", Script(text="file_a file_b file_c", words_per_chunk=1))
    log = Path(responses_stack["gateway"].log_path)
    log_offset = await asyncio.to_thread(lambda: log.stat().st_size)
    status, raw = await _post_and_hang_up(
        responses_stack.base_url + "/v1/responses", responses_stack.token, codex_body("gpt-4o")
    )
    assert status == 200
    events = parse_sse(raw)
    check_stream(events)
    completed = events[-1]
    assert completed["type"] == "response.completed"
    usage = completed["response"]["usage"]
    assert set(usage) == {
        "input_tokens",
        "input_tokens_details",
        "output_tokens",
        "output_tokens_details",
        "total_tokens",
    }
    assert usage["input_tokens_details"]["cached_tokens"] == 0
    assert usage["output_tokens_details"]["reasoning_tokens"] == 0
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == "file_a file_b file_c"

    # Only what chat completions knows reached OpenAI (its fake rejects the rest).
    sent = upstream.requests[-1].body
    assert [t["function"]["name"] for t in sent["tools"]] == ["exec_command"]
    assert [m["role"] for m in sent["messages"]] == ["system", "system", "user"]
    assert sent["reasoning_effort"] == "medium"
    assert sent["parallel_tool_calls"] is False and sent["tool_choice"] == "auto"
    assert sent["prompt_cache_key"] == "0199a6b2-5b6f-7d63-a1c4-5e0e9b0c1d2e"

    trajectory_id = completed["response"]["jetty_metadata"]["trajectory_id"]
    trajectory = await fetch_trajectory(responses_stack, trajectory_id)
    assert trajectory["status"] == "completed"  # not cancelled by the hang-up
    assert trajectory["usage"]["total_tokens"] == usage["total_tokens"]
    # The next request is served normally, and nothing was logged as a failure.
    async with openai.AsyncOpenAI(
        base_url=responses_stack.base_url + "/v1", api_key=responses_stack.token, max_retries=0
    ) as client:
        assert (await client.responses.create(model="mock/echo", input="ok")).output_text
    written = (await asyncio.to_thread(log.read_bytes))[log_offset:].decode()
    assert " ERROR " not in written and "Traceback" not in written, written
    assert "request aborted" not in written, written


async def test_raw_stream_with_tool_call_validates(
    responses_stack: TestStack, upstream: FakeUpstream
) -> None:
    upstream.reset()
    upstream.script(
        "gpt-4o",
        Script(tool_calls=[("exec_command", '{"cmd": "ls"}'), ("exec_command", '{"cmd": "pwd"}')]),
    )
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            responses_stack.base_url + "/responses",  # codex's base URL may omit /v1
            json=codex_body("gpt-4o"),
            headers={"Authorization": f"Bearer {responses_stack.token}"},
        ) as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["X-Jetty-Trajectory-Id"].startswith("tr_")
        events = parse_sse(await response.read())
    check_stream(events)
    calls = [
        e["item"]
        for e in events
        if e["type"] == "response.output_item.done" and e["item"]["type"] == "function_call"
    ]
    assert [c["arguments"] for c in calls] == ['{"cmd": "ls"}', '{"cmd": "pwd"}']
    final = events[-1]["response"]["output"]
    assert [item["call_id"] for item in final] == [c["call_id"] for c in calls]


# --- translation, table-driven -----------------------------------------------------------


def chat_of(body: dict[str, Any]) -> dict[str, Any]:
    return to_chat(parse_request(orjson.dumps({"model": "m", **body})))


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            {"input": "hi"},
            [{"role": "user", "content": "hi"}],
            id="string input",
        ),
        pytest.param(
            {"instructions": "sys", "input": [{"role": "system", "content": "mid"}]},
            [{"role": "system", "content": "sys"}, {"role": "system", "content": "mid"}],
            id="instructions and a system message",
        ),
        pytest.param(
            {
                "input": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_text", "text": "see"},
                            {
                                "type": "input_image",
                                "image_url": "https://x/a.png",
                                "detail": "low",
                            },
                            {
                                "type": "input_file",
                                "file_data": "data:application/pdf;base64,QQ==",
                                "filename": "a.pdf",
                            },
                        ],
                    }
                ]
            },
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "see"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "https://x/a.png", "detail": "low"},
                        },
                        {
                            "type": "file",
                            "file": {
                                "file_data": "data:application/pdf;base64,QQ==",
                                "filename": "a.pdf",
                            },
                        },
                    ],
                }
            ],
            id="images and files",
        ),
        pytest.param(
            {
                "input": [
                    {"role": "user", "content": "go"},
                    {
                        "type": "message",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": "Calling."}],
                    },
                    {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                    {"type": "function_call", "call_id": "c2", "name": "g", "arguments": '{"a":1}'},
                    {"type": "function_call_output", "call_id": "c1", "output": "one"},
                    {
                        "type": "function_call_output",
                        "call_id": "c2",
                        "output": [
                            {"type": "input_text", "text": "two"},
                            {"type": "input_image", "image_url": "data:image/png;base64,AA=="},
                        ],
                    },
                    {"type": "web_search_call", "id": "ws_1", "status": "completed"},
                ]
            },
            [
                {"role": "user", "content": "go"},
                {
                    "role": "assistant",
                    "content": "Calling.",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        },
                        {
                            "id": "c2",
                            "type": "function",
                            "function": {"name": "g", "arguments": '{"a":1}'},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "one"},
                {"role": "tool", "tool_call_id": "c2", "content": "two"},
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
                    ],
                },
            ],
            id="tool calls merge into the assistant turn; tool images follow as user",
        ),
    ],
)
def test_input_translation(body: dict[str, Any], expected: list[dict[str, Any]]) -> None:
    assert chat_of(body)["messages"] == expected


def test_parameters_translation() -> None:
    chat = chat_of(
        {
            "input": "x",
            "tools": [WEATHER_TOOL, {"type": "web_search"}, {"type": "custom", "name": "patch"}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "parallel_tool_calls": True,
            "max_output_tokens": 100,
            "text": {"format": {"type": "json_object"}, "verbosity": "low"},
            "reasoning": {"effort": "high", "summary": "auto"},
            "include": ["reasoning.encrypted_content"],
            "store": True,
            "truncation": "auto",
            "stream": True,
        }
    )
    assert chat == {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "The weather in a city.",
                    "parameters": WEATHER_TOOL["parameters"],
                    "strict": False,
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": True,
        "max_completion_tokens": 100,
        "response_format": {"type": "json_object"},
        "verbosity": "low",
        "reasoning_effort": "high",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    # Without function tools, tool settings are not sent (OpenAI rejects them alone).
    bare = chat_of({"input": "x", "tools": [{"type": "web_search"}], "parallel_tool_calls": False})
    assert "tools" not in bare and "parallel_tool_calls" not in bare


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
        ({"input": "x", "conversation": "conv_1"}, "conversation"),
        ({"input": "x", "background": True}, "background"),
        ({"input": []}, "input"),
        ({"input": "x", "temperature": 3}, "temperature"),
        ({"input": "x", "tool_choice": "sometimes"}, "tool_choice"),
        ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        (
            {"input": "x", "text": {"format": {"type": "json_schema", "name": "a"}}},
            "text.format.schema",
        ),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f"}]}, "input[0].arguments"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "input[0].content[0].type",
        ),
    ],
)
def test_invalid_requests_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        chat_of(body)
    assert caught.value.param == param
    assert caught.value.status == 400


def test_model_is_required() -> None:
    with pytest.raises(InvalidRequest) as caught:
        to_chat(parse_request(b'{"input": "x"}'))
    assert caught.value.param == "model"


# --- answers and streams, table-driven ---------------------------------------------------


def _shell(**body: Any) -> ResponseShell:
    return ResponseShell.of(
        parse_request(orjson.dumps({"model": "m", "input": "x", **body})), "resp_t"
    )


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "up-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


USAGE = {
    "prompt_tokens": 10,
    "completion_tokens": 7,
    "total_tokens": 17,
    "prompt_tokens_details": {"cached_tokens": 4, "cache_creation_tokens": 2},
    "completion_tokens_details": {"reasoning_tokens": 3},
}
BLOCK = {"type": "thinking", "thinking": "hmm", "signature": "sig=="}


def _events(translator: StreamTranslator, chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    raw = b"".join(translator.start())
    for chunk in chunks:
        raw += b"".join(translator.feed(chunk))
    raw += b"".join(translator.finish())
    events = parse_sse(raw)
    check_stream(events)
    return events


def test_stream_reasoning_text_refusal_and_tools() -> None:
    events = _events(
        StreamTranslator(_shell(include=["reasoning.encrypted_content"])),
        [
            _chunk({"role": "assistant", "reasoning_content": "hm"}),
            _chunk({"reasoning_content": "m"}),
            _chunk({"thinking_blocks": [BLOCK]}),
            _chunk({"content": "Hi"}),
            _chunk({"refusal": "no"}),
            _chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "f", "arguments": ""},
                        }
                    ]
                }
            ),
            _chunk(
                {
                    "tool_calls": [
                        {
                            "index": 1,
                            "id": "call_2",
                            "type": "function",
                            "function": {"name": "g", "arguments": "{}"},
                        }
                    ]
                }
            ),
            # interleaved arguments of parallel calls still land in the right item
            _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":1}'}}]}),
            _chunk({}, "tool_calls"),
            {"id": "c", "choices": [], "usage": USAGE},
        ],
    )
    completed = events[-1]["response"]
    assert completed["model"] == "up-model"
    reasoning, message, call_1, call_2 = completed["output"]
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "hmm"}]
    assert decode_thinking(reasoning["encrypted_content"]) == [BLOCK]
    assert message["content"][0]["text"] == "Hi"
    assert message["content"][1] == {"type": "refusal", "refusal": "no"}
    assert (call_1["call_id"], call_1["arguments"]) == ("call_1", '{"a":1}')
    assert (call_2["call_id"], call_2["arguments"]) == ("call_2", "{}")
    assert completed["usage"] == {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 2},
        "output_tokens": 7,
        "output_tokens_details": {"reasoning_tokens": 3},
        "total_tokens": 17,
    }
    assert [e["type"] for e in events if "reasoning_text" in e["type"]] == [
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
    ]


def test_thinking_blocks_round_trip_through_a_reasoning_item() -> None:
    """Anthropic's signed thinking goes out in encrypted_content and comes back on the
    assistant turn it preceded, so extended thinking with tools works through codex."""
    shell = _shell(include=["reasoning.encrypted_content"])
    item = shell.reasoning_item("hmm", [BLOCK])
    chat = chat_of(
        {
            "input": [
                {"role": "user", "content": "go"},
                item,
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "done"},
                # an OpenAI-encrypted blob means nothing to other providers: dropped
                {"type": "reasoning", "summary": [], "encrypted_content": "gAAAAB..."},
            ]
        }
    )
    assistant = chat["messages"][1]
    assert assistant["thinking_blocks"] == [BLOCK]
    assert all("thinking_blocks" not in m for m in chat["messages"][2:])
    # without include, nothing encrypted is handed out
    assert "encrypted_content" not in _shell().reasoning_item("hmm", [BLOCK])
    assert decode_thinking(encode_thinking([BLOCK])) == [BLOCK]


@pytest.mark.parametrize(
    ("finish", "status", "reason", "last"),
    [
        ("stop", "completed", None, "response.completed"),
        ("length", "incomplete", "max_output_tokens", "response.incomplete"),
        ("content_filter", "incomplete", "content_filter", "response.incomplete"),
    ],
)
def test_finish_reasons(finish: str, status: str, reason: str | None, last: str) -> None:
    events = _events(StreamTranslator(_shell()), [_chunk({"content": "x"}, finish)])
    assert events[-1]["type"] == last
    assert events[-1]["response"]["status"] == status
    details = events[-1]["response"]["incomplete_details"]
    assert (details or {}).get("reason") == reason
    completion = {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "up",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": finish}
        ],
        "usage": USAGE,
    }
    document = response_object(_shell(), completion)
    validate("Response", document)
    assert document["status"] == status


def test_failure_closes_open_items() -> None:
    translator = StreamTranslator(_shell())
    raw = b"".join(translator.start() + translator.feed(_chunk({"content": "part"})))
    raw += b"".join(translator.fail(RateLimited("Slow down.", retry_after=2)))
    events = parse_sse(raw)
    check_stream(events)
    failed = events[-1]["response"]
    assert failed["status"] == "failed"
    assert failed["error"] == {
        "code": "rate_limit_exceeded",
        "message": "Slow down. Please try again in 2s.",
    }
    assert failed["output"][0]["content"][0]["text"] == "part"
    assert error_object(ApiError("x", status=502))["code"] == "server_error"
