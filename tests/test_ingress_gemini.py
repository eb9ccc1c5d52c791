"""The Gemini API ingress (``/v1beta/models/{model}:generateContent`` and
``:streamGenerateContent``): the official ``google-genai`` SDK and plain HTTP as
gemini-cli speaks it, against the built-in mock provider and the faithful Gemini
fake upstream (so a Gemini client talks to Gemini through us, thought signatures
and all), plus table-driven translation tests of the pure functions."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from jetty_cli.testing import StackFactory, TestStack
from services.gateway.ingress.gemini import (
    StreamTranslator,
    error_document,
    response_document,
)
from services.gateway.ingress.gemini_translate import parse_request, to_chat, to_json_schema
from shared.errors import InvalidRequest, RateLimited, UpstreamError
from tests.fakes.gemini_upstream import FakeGemini, Script
from tests.helpers import fetch_trajectory

# google-genai's async client subclasses aiohttp.ClientSession, which aiohttp frowns on.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Inheritance class AiohttpClientSession from ClientSession:DeprecationWarning"
)

GEMINI_KEY = "gem-ingress-test-1"
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "OBJECT",
        "properties": {"city": {"type": "STRING"}},
        "required": ["city"],
    },
}


# --- helpers -----------------------------------------------------------------------------


def parse_sse(raw: bytes) -> list[dict[str, Any]]:
    """Google's framing: ``data: <json>`` events, each ended by ``\\r\\n\\r\\n``."""
    assert raw.endswith(b"\r\n\r\n")
    events = []
    for block in raw.split(b"\r\n\r\n")[:-1]:
        assert block.startswith(b"data: ") and b"\n" not in block, block
        events.append(json.loads(block[len(b"data: ") :]))
    return events


async def _ingress_of(stack: TestStack, trajectory_id: str) -> str | None:
    conn = await asyncpg.connect(stack.config.database_url)
    try:
        value: str | None = await conn.fetchval(
            "SELECT ingress FROM steps WHERE trajectory_id = $1", trajectory_id
        )
        return value
    finally:
        await conn.close()


async def _post(
    stack: TestStack,
    path: str,
    body: Any,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    auth = {"x-goog-api-key": stack.token} if headers is None else headers
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            stack.base_url + path,
            data=body if isinstance(body, bytes) else orjson.dumps(body),
            headers={"Content-Type": "application/json", **auth},
            params=params,
        ) as response,
    ):
        return response.status, dict(response.headers), await response.read()


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def gemini() -> AsyncIterator[FakeGemini]:
    fake = FakeGemini(api_key=GEMINI_KEY)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture(scope="module")
def gemini_stack(stack_factory: StackFactory, gemini: FakeGemini) -> TestStack:
    """Mock provider plus the fake Gemini API behind ``gemini-*`` names."""
    return stack_factory(env={"GEMINI_API_KEY": GEMINI_KEY, "GEMINI_BASE_URL": gemini.base_url})


@pytest.fixture
async def client(gemini_stack: TestStack, gemini: FakeGemini) -> AsyncIterator[genai.Client]:
    gemini.reset()
    sdk = genai.Client(
        api_key=gemini_stack.token, http_options=types.HttpOptions(base_url=gemini_stack.base_url)
    )
    yield sdk
    await sdk.aio.aclose()
    sdk.close()


# --- the SDK against the mock provider ---------------------------------------------------


async def test_generate_content_text(client: genai.Client, gemini_stack: TestStack) -> None:
    response = await client.aio.models.generate_content(
        model="mock/echo",
        contents="Hello there",
        config=types.GenerateContentConfig(system_instruction="Be brief.", temperature=0.5),
    )
    assert response.text == "You said: Hello there"
    (candidate,) = response.candidates or []
    assert candidate.finish_reason == types.FinishReason.STOP
    assert candidate.content is not None and candidate.content.role == "model"
    usage = response.usage_metadata
    assert usage is not None and usage.prompt_token_count and usage.candidates_token_count
    assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count
    assert response.model_version == "mock/echo"
    assert response.sdk_http_response is not None
    headers = {k.lower(): v for k, v in (response.sdk_http_response.headers or {}).items()}
    trajectory_id = headers["x-jetty-trajectory-id"]
    trajectory = await fetch_trajectory(gemini_stack, trajectory_id)
    assert trajectory["status"] == "completed"
    step = trajectory["steps"][0]
    assert step["provider"] == "mock"
    assert step["request"]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert step["request"]["params"]["temperature"] == 0.5
    assert trajectory["usage"]["total_tokens"] == usage.total_token_count
    assert await _ingress_of(gemini_stack, trajectory_id) == "gemini"


async def test_stream_text(client: genai.Client) -> None:
    chunks = [
        chunk
        async for chunk in await client.aio.models.generate_content_stream(
            model="mock/echo", contents="one two three four five"
        )
    ]
    assert len(chunks) > 1
    assert "".join(c.text or "" for c in chunks) == "You said: one two three four five"
    last = chunks[-1]
    assert last.candidates and last.candidates[0].finish_reason == types.FinishReason.STOP
    assert last.usage_metadata is not None and last.usage_metadata.total_token_count
    assert all(c.candidates and c.candidates[0].finish_reason is None for c in chunks[:-1])


async def test_function_call_round_trip_with_the_mock(client: genai.Client) -> None:
    tools = [types.Tool(function_declarations=[types.FunctionDeclaration(**WEATHER)])]
    first = await client.aio.models.generate_content(
        model="mock/echo",
        contents="Weather in Paris?",
        config=types.GenerateContentConfig(
            tools=tools,
            tool_config=types.ToolConfig(
                function_calling_config=types.FunctionCallingConfig(
                    mode=types.FunctionCallingConfigMode.ANY
                )
            ),
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        ),
    )
    (call,) = first.function_calls or []
    assert call.name == "get_weather" and call.args == {} and call.id
    assert first.candidates and first.candidates[0].content is not None
    second = await client.aio.models.generate_content(
        model="mock/echo",
        contents=[
            types.Content(role="user", parts=[types.Part(text="Weather in Paris?")]),
            first.candidates[0].content,
            types.Content(
                role="user",
                parts=[
                    types.Part.from_function_response(
                        name="get_weather", response={"output": "Sunny"}
                    )
                ],
            ),
        ],
        config=types.GenerateContentConfig(tools=tools),
    )
    assert second.text


async def test_json_array_stream_without_alt_sse(gemini_stack: TestStack) -> None:
    status, headers, raw = await _post(
        gemini_stack,
        "/v1beta/models/mock/echo:streamGenerateContent",
        {"contents": [{"role": "user", "parts": [{"text": "a b c d"}]}]},
    )
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    documents = json.loads(raw)
    assert isinstance(documents, list) and len(documents) > 1
    text = "".join(d["candidates"][0]["content"]["parts"][0]["text"] for d in documents)
    assert text == "You said: a b c d"
    assert documents[-1]["candidates"][0]["finishReason"] == "STOP"
    assert "usageMetadata" in documents[-1]


# --- a Gemini client talking to Gemini through us ----------------------------------------


async def test_gemini_cli_request(gemini_stack: TestStack, gemini: FakeGemini) -> None:
    """What gemini-cli 0.61 sends (see ../shared/agent-clis.md): x-goog-api-key,
    :streamGenerateContent?alt=sse, an explicit model, its chat generation config."""
    gemini.reset()
    gemini.script("gemini-2.5-flash", Script(text="I will list the files.", thoughts_tokens=5))
    body = {
        "contents": [{"role": "user", "parts": [{"text": "list the files"}]}],
        "systemInstruction": {"role": "user", "parts": [{"text": "You are Gemini CLI."}]},
        "tools": [
            {
                "functionDeclarations": [
                    {
                        "name": "run_shell_command",
                        "description": "Runs a shell command.",
                        "parametersJsonSchema": {
                            "type": "object",
                            "properties": {"command": {"type": "string"}},
                            "required": ["command"],
                        },
                    }
                ]
            }
        ],
        "generationConfig": {
            "temperature": 1,
            "topP": 0.95,
            "topK": 64,
            "thinkingConfig": {"includeThoughts": True, "thinkingBudget": 8192},
        },
    }
    status, headers, raw = await _post(
        gemini_stack,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        body,
        params={"alt": "sse"},
    )
    assert status == 200, raw
    assert headers["Content-Type"].startswith("text/event-stream")
    events = parse_sse(raw)
    assert len(events) > 1
    text = "".join(
        p.get("text", "") for e in events for p in e["candidates"][0]["content"]["parts"]
    )
    assert text == "I will list the files."
    last = events[-1]
    assert last["candidates"][0]["finishReason"] == "STOP"
    usage = last["usageMetadata"]
    assert usage["thoughtsTokenCount"] == 5
    assert usage["totalTokenCount"] == (
        usage["promptTokenCount"] + usage["candidatesTokenCount"] + usage["thoughtsTokenCount"]
    )
    assert all("finishReason" not in e["candidates"][0] for e in events[:-1])
    assert last["modelVersion"] == "gemini-2.5-flash"

    (sent,) = gemini.requests
    config = sent.body["generationConfig"]
    assert config["topK"] == 64 and config["topP"] == 0.95
    assert config["thinkingConfig"] == {"thinkingBudget": 8192}
    assert sent.body["systemInstruction"]["parts"] == [{"text": "You are Gemini CLI."}]
    (declaration,) = sent.body["tools"][0]["functionDeclarations"]
    assert declaration["name"] == "run_shell_command"
    trajectory = await fetch_trajectory(gemini_stack, headers["X-Jetty-Trajectory-Id"])
    assert trajectory["status"] == "completed"
    assert trajectory["steps"][0]["provider"] == "gemini"
    assert trajectory["usage"]["total_tokens"] == usage["totalTokenCount"]


async def test_function_call_round_trip_keeps_thought_signatures(
    client: genai.Client, gemini: FakeGemini, gemini_stack: TestStack
) -> None:
    """Gemini 3 rejects a history whose function call lost its thought signature; the
    signature travels through the chat shape and back."""
    model = "gemini-3-pro-preview"
    gemini.script(model, Script(tool_calls=[("get_weather", {"city": "Paris"})], call_ids=True))
    tools = [types.Tool(function_declarations=[types.FunctionDeclaration(**WEATHER)])]
    config = types.GenerateContentConfig(
        tools=tools,
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    chunks = [
        c
        async for c in await client.aio.models.generate_content_stream(
            model=model, contents="Weather in Paris?", config=config
        )
    ]
    calls = [
        part
        for c in chunks
        for candidate in c.candidates or []
        for part in (candidate.content.parts or [] if candidate.content else [])
        if part.function_call
    ]
    (part,) = calls
    assert part.function_call is not None
    assert part.function_call.name == "get_weather"
    assert part.function_call.args == {"city": "Paris"}
    assert part.thought_signature  # Gemini's signature, handed to the client
    issued = gemini.requests[-1]

    gemini.scripts.clear()
    second = await client.aio.models.generate_content(
        model=model,
        contents=[
            types.Content(role="user", parts=[types.Part(text="Weather in Paris?")]),
            types.Content(role="model", parts=[part]),
            types.Content(
                role="user",
                parts=[
                    types.Part(
                        function_response=types.FunctionResponse(
                            id=part.function_call.id,
                            name="get_weather",
                            response={"output": "Sunny, 21 C"},
                        )
                    )
                ],
            ),
        ],
        config=config,
    )
    assert second.text == "Hello! How can I help you today?"
    sent = gemini.requests[-1].body["contents"]
    assert sent[1]["parts"][0]["functionCall"] == {"name": "get_weather", "args": {"city": "Paris"}}
    assert sent[1]["parts"][0]["thoughtSignature"] in gemini.signatures  # the real one
    assert sent[2]["parts"][0]["functionResponse"] == {
        "name": "get_weather",
        "response": {"output": "Sunny, 21 C"},
    }
    assert issued is not gemini.requests[-1]


async def test_usage_with_cache_and_thoughts(client: genai.Client, gemini: FakeGemini) -> None:
    gemini.script("gemini-2.5-pro", Script(cached_tokens=3, thoughts_tokens=4))
    response = await client.aio.models.generate_content(model="gemini-2.5-pro", contents="Hello")
    usage = response.usage_metadata
    assert usage is not None
    assert usage.cached_content_token_count == 3
    assert usage.thoughts_token_count == 4
    assert usage.total_token_count == (
        (usage.prompt_token_count or 0) + (usage.candidates_token_count or 0) + 4
    )


# --- auth and errors ---------------------------------------------------------------------


async def test_key_query_parameter_and_bearer_are_accepted(gemini_stack: TestStack) -> None:
    path = "/v1beta/models/mock/echo:generateContent"
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    status, _, _ = await _post(
        gemini_stack, path, body, headers={}, params={"key": gemini_stack.token}
    )
    assert status == 200
    status, _, _ = await _post(
        gemini_stack, path, body, headers={"Authorization": f"Bearer {gemini_stack.token}"}
    )
    assert status == 200
    # percent-encoded provider/model works too
    status, _, raw = await _post(gemini_stack, "/v1beta/models/mock%2Fecho:generateContent", body)
    assert status == 200, raw


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "google_status"),
    [
        ("mock/echo:generateContent", {"contents": []}, None, 400, "INVALID_ARGUMENT"),
        ("mock/echo:generateContent", b"{not json", None, 400, "INVALID_ARGUMENT"),
        ("mock/echo:generateContent", {"contents": [{"parts": []}]}, None, 400, "INVALID_ARGUMENT"),
        (
            "mock/echo:generateContent",
            {"contents": [{"parts": [{"text": "x"}]}]},
            {},
            401,
            "UNAUTHENTICATED",
        ),
        (
            "mock/echo:generateContent",
            {"contents": [{"parts": [{"text": "x"}]}]},
            {"x-goog-api-key": "wrong"},
            401,
            "UNAUTHENTICATED",
        ),
        (
            "nobody-knows:generateContent",
            {"contents": [{"parts": [{"text": "x"}]}]},
            None,
            404,
            "NOT_FOUND",
        ),
        (
            "mock/echo:countTokens",
            {"contents": [{"parts": [{"text": "x"}]}]},
            None,
            404,
            "NOT_FOUND",
        ),
        (
            "gemini-fake-429:generateContent",
            {"contents": [{"parts": [{"text": "x"}]}]},
            None,
            429,
            "RESOURCE_EXHAUSTED",
        ),
        (
            "gemini-fake-503:streamGenerateContent",
            {"contents": [{"parts": [{"text": "x"}]}]},
            None,
            502,
            "UNAVAILABLE",
        ),
    ],
)
async def test_errors_are_google_shaped(
    gemini_stack: TestStack,
    path: str,
    body: Any,
    headers: dict[str, str] | None,
    status: int,
    google_status: str,
) -> None:
    got, response_headers, raw = await _post(
        gemini_stack, "/v1beta/models/" + path, body, headers=headers, params={"alt": "sse"}
    )
    assert got == status, raw
    assert response_headers["Content-Type"].startswith("application/json")
    error = json.loads(raw)["error"]
    assert error["code"] == status and error["status"] == google_status
    assert isinstance(error["message"], str) and error["message"]
    if status == 429:
        assert response_headers["Retry-After"] == "7"
        assert {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"} in error[
            "details"
        ]
    assert gemini_stack.token not in raw.decode()


async def test_the_sdk_raises_google_errors(client: genai.Client) -> None:
    with pytest.raises(genai_errors.ClientError) as caught:
        await client.aio.models.generate_content(model="nobody-knows", contents="x")
    assert caught.value.code == 404 and caught.value.status == "NOT_FOUND"
    with pytest.raises(genai_errors.ClientError) as caught:
        await client.aio.models.generate_content(
            model="mock/echo",
            contents="x",
            config=types.GenerateContentConfig(response_mime_type="text/x.enum"),
        )
    assert caught.value.code == 400
    assert "generationConfig.responseMimeType" in (caught.value.message or "")


async def test_wrong_method_is_google_shaped(gemini_stack: TestStack) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            gemini_stack.base_url + "/v1beta/models/mock/echo:generateContent",
            headers={"x-goog-api-key": gemini_stack.token},
        ) as response,
    ):
        assert response.status == 405
        error = (await response.json())["error"]
    assert error["code"] == 405 and error["status"]


async def test_error_mid_stream_is_an_error_document(gemini_stack: TestStack) -> None:
    status, _, raw = await _post(
        gemini_stack,
        "/v1beta/models/gemini-fake-stream-error:streamGenerateContent",
        {"contents": [{"parts": [{"text": "x"}]}]},
        params={"alt": "sse"},
    )
    assert status == 200
    events = parse_sse(raw)
    assert events[0]["candidates"][0]["content"]["parts"][0]["text"] == "one"
    assert set(events[-1]) == {"error"}
    assert events[-1]["error"]["status"] == "UNAVAILABLE"


# --- translation, table-driven -----------------------------------------------------------


def chat_of(body: dict[str, Any], model: str = "m", stream: bool = False) -> dict[str, Any]:
    return to_chat(parse_request(orjson.dumps(body)), model, stream=stream)


@pytest.mark.parametrize(
    ("contents", "expected"),
    [
        pytest.param(
            [{"parts": [{"text": "hi"}]}],
            [{"role": "user", "content": "hi"}],
            id="role defaults to user",
        ),
        pytest.param(
            [
                {
                    "role": "user",
                    "parts": [
                        {"text": "see"},
                        {"inlineData": {"mimeType": "image/png", "data": "AA=="}},
                        {"inline_data": {"mime_type": "audio/wav", "data": "UklG"}},
                        {"inlineData": {"mimeType": "application/pdf", "data": "JVBE"}},
                        {"fileData": {"mimeType": "image/jpeg", "fileUri": "gs://b/a.jpg"}},
                    ],
                }
            ],
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "see"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
                        {"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}},
                        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE"}},
                        {"type": "image_url", "image_url": {"url": "gs://b/a.jpg"}},
                    ],
                }
            ],
            id="media, camelCase and snake_case",
        ),
        pytest.param(
            [
                {"role": "user", "parts": [{"text": "go"}]},
                {
                    "role": "model",
                    "parts": [
                        {"text": "thinking…", "thought": True},
                        {"text": "Calling."},
                        {
                            "functionCall": {"name": "f", "args": {"a": 1}},
                            "thoughtSignature": "c2ln",
                        },
                        {"functionCall": {"id": "own", "name": "g", "args": {}}},
                    ],
                },
                {
                    "role": "user",
                    "parts": [
                        {"functionResponse": {"id": "own", "name": "g", "response": {"x": [1]}}},
                        {"functionResponse": {"name": "f", "response": {"output": "done"}}},
                        {"text": "and now?"},
                    ],
                },
            ],
            [
                {"role": "user", "content": "go"},
                {
                    "role": "assistant",
                    "content": "Calling.",
                    "tool_calls": [
                        {
                            "id": "call_1_2",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"a":1}'},
                            "extra_content": {"google": {"thought_signature": "c2ln"}},
                        },
                        {
                            "id": "own",
                            "type": "function",
                            "function": {"name": "g", "arguments": "{}"},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "own", "content": '{"x":[1]}'},
                {"role": "tool", "tool_call_id": "call_1_2", "content": "done"},
                {"role": "user", "content": "and now?"},
            ],
            id="function calls and responses pair by id, then by name",
        ),
    ],
)
def test_contents_translation(contents: list[Any], expected: list[dict[str, Any]]) -> None:
    assert chat_of({"contents": contents})["messages"] == expected


def test_config_translation() -> None:
    chat = chat_of(
        {
            "contents": [{"parts": [{"text": "x"}]}],
            "systemInstruction": {"parts": [{"text": "one"}, {"text": "two"}]},
            "tools": [{"functionDeclarations": [WEATHER]}, {"googleSearch": {}}],
            "toolConfig": {
                "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["a", "b"]}
            },
            "generationConfig": {
                "temperature": 0.3,
                "topP": 0.9,
                "topK": 40,
                "maxOutputTokens": 99,
                "stopSequences": ["END"],
                "candidateCount": 2,
                "seed": 5,
                "responseMimeType": "application/json",
                "responseSchema": {
                    "type": "OBJECT",
                    "properties": {"n": {"type": "INTEGER", "nullable": True}},
                    "propertyOrdering": ["n"],
                },
                "thinkingConfig": {"thinkingLevel": "LOW"},
                "safetySettings": [],
            },
        },
        model="gemini-2.5-flash",
        stream=True,
    )
    assert chat == {
        "model": "gemini-2.5-flash",
        "messages": [
            {"role": "system", "content": "one"},
            {"role": "system", "content": "two"},
            {"role": "user", "content": "x"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "The weather in a city.",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                        "required": ["city"],
                    },
                },
            }
        ],
        "tool_choice": {
            "type": "allowed_tools",
            "allowed_tools": {
                "mode": "required",
                "tools": [
                    {"type": "function", "function": {"name": "a"}},
                    {"type": "function", "function": {"name": "b"}},
                ],
            },
        },
        "temperature": 0.3,
        "top_p": 0.9,
        "top_k": 40,
        "max_completion_tokens": 99,
        "stop": ["END"],
        "n": 2,
        "seed": 5,
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "response",
                "schema": {
                    "type": "object",
                    "properties": {"n": {"type": ["integer", "null"]}},
                },
            },
        },
        "reasoning_effort": "low",
        "stream": True,
        "stream_options": {"include_usage": True},
    }


@pytest.mark.parametrize(
    ("budget", "effort"),
    [(0, "none"), (512, "low"), (1024, "low"), (8192, "medium"), (24576, "high"), (-1, None)],
)
def test_thinking_budget_to_effort(budget: int, effort: str | None) -> None:
    chat = chat_of(
        {
            "contents": [{"parts": [{"text": "x"}]}],
            "generationConfig": {"thinkingConfig": {"thinkingBudget": budget}},
        }
    )
    assert chat.get("reasoning_effort") == effort


@pytest.mark.parametrize(
    ("mode", "names", "choice"),
    [
        ("AUTO", None, None),
        ("VALIDATED", None, None),
        ("NONE", None, "none"),
        ("ANY", None, "required"),
        ("ANY", ["get_weather"], {"type": "function", "function": {"name": "get_weather"}}),
    ],
)
def test_function_calling_modes(mode: str, names: list[str] | None, choice: Any) -> None:
    config: dict[str, Any] = {"mode": mode}
    if names:
        config["allowedFunctionNames"] = names
    chat = chat_of(
        {
            "contents": [{"parts": [{"text": "x"}]}],
            "tools": [{"functionDeclarations": [WEATHER]}],
            "toolConfig": {"functionCallingConfig": config},
        }
    )
    assert chat.get("tool_choice") == choice


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"contents": []}, "contents"),
        ({}, "contents"),
        ({"contents": [{"role": "system", "parts": [{"text": "x"}]}]}, "contents[0].role"),
        (
            {"contents": [{"parts": [{"inlineData": {"data": "AA=="}}]}]},
            "contents[0].parts[0].inlineData.mimeType",
        ),
        (
            {"contents": [{"parts": [{"functionResponse": {"name": "f", "response": {}}}]}]},
            "contents[0].parts[0].functionResponse",
        ),
        (
            {
                "contents": [
                    {
                        "role": "model",
                        "parts": [{"functionResponse": {"name": "f", "response": {}}}],
                    }
                ]
            },
            "contents[0].parts[0].functionResponse",
        ),
        (
            {"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"temperature": 5}},
            "generationConfig.temperature",
        ),
        (
            {"contents": [{"parts": [{"text": "x"}]}], "cachedContent": "cachedContents/1"},
            "cachedContent",
        ),
    ],
)
def test_invalid_requests_name_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        chat_of(body)
    assert caught.value.param == field
    assert caught.value.status == 400


def test_schema_conversion_keeps_property_names() -> None:
    schema = {
        "type": "OBJECT",
        "properties": {
            "type": {"type": "STRING", "enum": ["a", "b"]},
            "items": {"type": "ARRAY", "items": {"type": "NUMBER"}, "min_items": 1},
        },
        "any_of": [{"type": "OBJECT"}],
    }
    assert to_json_schema(schema) == {
        "type": "object",
        "properties": {
            "type": {"type": "string", "enum": ["a", "b"]},
            "items": {"type": "array", "items": {"type": "number"}, "minItems": 1},
        },
        "anyOf": [{"type": "object"}],
    }


# --- answers and streams -----------------------------------------------------------------


def _chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "up-model",
        "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
    }


USAGE = {
    "prompt_tokens": 10,
    "completion_tokens": 7,
    "total_tokens": 17,
    "prompt_tokens_details": {"cached_tokens": 4},
    "completion_tokens_details": {"reasoning_tokens": 3},
}
USAGE_METADATA = {
    "promptTokenCount": 10,
    "candidatesTokenCount": 4,
    "totalTokenCount": 17,
    "cachedContentTokenCount": 4,
    "thoughtsTokenCount": 3,
}


def test_stream_documents() -> None:
    translator = StreamTranslator("m", include_thoughts=True)
    docs = []
    for chunk in [
        _chunk({"role": "assistant", "reasoning_content": "hmm"}),
        _chunk({"content": "Hi"}),
        _chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"a"'},
                        "extra_content": {"google": {"thought_signature": "c2ln"}},
                    }
                ]
            }
        ),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}),
        _chunk({}, "tool_calls"),
        {"id": "chatcmpl-1", "choices": [], "usage": USAGE},
    ]:
        docs += translator.feed(chunk)
    docs += translator.finish_documents()
    assert [d["candidates"][0]["content"]["parts"] for d in docs] == [
        [{"text": "hmm", "thought": True}],
        [{"text": "Hi"}],
        [
            {
                "functionCall": {"name": "f", "args": {"a": 1}, "id": "call_1"},
                "thoughtSignature": "c2ln",
            }
        ],
    ]
    assert docs[-1]["candidates"][0]["finishReason"] == "STOP"
    assert docs[-1]["usageMetadata"] == USAGE_METADATA
    assert list(docs[-1]) == ["candidates", "usageMetadata", "modelVersion", "responseId"]
    assert docs[-1]["modelVersion"] == "up-model" and docs[-1]["responseId"] == "chatcmpl-1"


def test_stream_without_thoughts_two_candidates_and_a_bad_call() -> None:
    translator = StreamTranslator("m", include_thoughts=False)
    docs = []
    for chunk in [
        _chunk({"reasoning_content": "hidden"}),
        _chunk({"content": "A"}, index=0),
        _chunk({"content": "B"}, index=1),
        _chunk({}, "length", index=0),
        _chunk(
            {
                "tool_calls": [
                    {"index": 0, "id": "c", "function": {"name": "f", "arguments": "[1]"}}
                ]
            },
            index=1,
        ),
        _chunk({}, "tool_calls", index=1),
    ]:
        docs += translator.feed(chunk)
    docs += translator.finish_documents()
    assert all(
        p.get("text") != "hidden"
        for d in docs
        for c in d["candidates"]
        for p in c["content"]["parts"]
    )
    last = docs[-1]["candidates"]
    assert [(c["index"], c["finishReason"]) for c in last] == [
        (0, "MAX_TOKENS"),
        (1, "MALFORMED_FUNCTION_CALL"),
    ]
    assert "usageMetadata" not in docs[-1]  # none reported, none invented


def test_response_document() -> None:
    completion = {
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "created": 1,
        "model": "up-model",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Calling.",
                    "reasoning_content": "hmm",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
            },
            {
                "index": 1,
                "message": {"role": "assistant", "content": "Filtered"},
                "finish_reason": "content_filter",
            },
        ],
        "usage": USAGE,
    }
    assert response_document(completion, include_thoughts=False) == {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {"text": "Calling."},
                        {"functionCall": {"name": "f", "args": {}, "id": "c1"}},
                    ],
                },
                "finishReason": "STOP",
                "index": 0,
            },
            {
                "content": {"role": "model", "parts": [{"text": "Filtered"}]},
                "finishReason": "SAFETY",
                "index": 1,
            },
        ],
        "usageMetadata": USAGE_METADATA,
        "modelVersion": "up-model",
        "responseId": "chatcmpl-9",
    }
    with_thoughts = response_document(completion, include_thoughts=True)
    assert with_thoughts["candidates"][0]["content"]["parts"][0] == {"text": "hmm", "thought": True}


def test_error_documents() -> None:
    assert error_document(RateLimited("Slow down.", retry_after=7, code="rate_limit_exceeded")) == {
        "error": {
            "code": 429,
            "message": "Slow down.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "RATE_LIMIT_EXCEEDED",
                    "domain": "jetty",
                },
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"},
            ],
        }
    }
    assert error_document(UpstreamError("bad gateway"))["error"]["status"] == "UNAVAILABLE"


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ("ab-_cd", "ab+/cd=="),  # google-genai's URL-safe spelling of proto bytes
        ("ab+/cd==", "ab+/cd=="),
        ("skip_thought_signature_validator", "skip_thought_signature_validator"),
    ],
)
def test_thought_signatures_are_sent_in_standard_base64(given: str, sent: str) -> None:
    chat = chat_of(
        {
            "contents": [
                {"role": "user", "parts": [{"text": "go"}]},
                {
                    "role": "model",
                    "parts": [
                        {"functionCall": {"name": "f", "args": {}}, "thoughtSignature": given}
                    ],
                },
            ]
        }
    )
    call = chat["messages"][1]["tool_calls"][0]
    assert call["extra_content"] == {"google": {"thought_signature": sent}}
