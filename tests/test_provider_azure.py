"""The Azure OpenAI adapter: configuration and URL choice (v1 and deployment routes,
deployment names that must not reach a URL), the per-version body policy, and
end-to-end calls against the fake Azure server (tests/fakes/azure_upstream.py) —
text, tools, images, streams with Azure's filter chunks, content filtering, errors,
cut streams, stream errors, early close, missing usage."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import orjson
import pytest

from services.proxy.accumulate import Accumulator
from services.proxy.providers import azure
from services.proxy.providers.azure import AzureConfig, AzureOpenAIProvider
from services.proxy.providers.base import ChatChunk, UpstreamCall
from services.proxy.providers.openai_compat import Timeouts
from shared.errors import ApiError, InvalidRequest, RateLimited, UpstreamError, UpstreamTimeout
from shared.openai_chat import parse_chat_request
from tests.fakes.azure_upstream import AZURE_MODEL, FakeAzure
from tests.fakes.openai_upstream import Script

KEY = "azure-provider-key-0123456789abcdef"
PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
]


def call_for(body: dict[str, Any]) -> UpstreamCall:
    raw = orjson.dumps(body)
    request = parse_chat_request(raw)
    return UpstreamCall(model=request.model.removeprefix("azure/"), request=request, body=raw)


def chat(model: str = "azure/my-gpt4o", text: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def accumulate(chunks: list[ChatChunk]) -> Accumulator:
    acc = Accumulator()
    for chunk in chunks:
        acc.add_chunk(chunk)
    return acc


def adapter(
    endpoint: str, version: str = "v1", key: str = KEY, **timeouts: float
) -> AzureOpenAIProvider:
    return AzureOpenAIProvider(
        AzureConfig(
            endpoint=endpoint,
            api_key=key,
            api_version=version,
            timeouts=Timeouts(**{"connect": 2.0, "first_byte": 5.0, "read": 5.0, **timeouts}),
        )
    )


# --- configuration and URLs ----------------------------------------------------------------


def test_from_env() -> None:
    timeouts = Timeouts()
    env = {"AZURE_OPENAI_ENDPOINT": "https://res.openai.azure.com/", "AZURE_OPENAI_API_KEY": "k"}
    assert azure.from_env({}, timeouts, 4) is None
    assert (
        azure.from_env({"AZURE_OPENAI_ENDPOINT": env["AZURE_OPENAI_ENDPOINT"]}, timeouts, 4) is None
    )
    assert azure.from_env({"AZURE_OPENAI_API_KEY": "k"}, timeouts, 4) is None
    provider = azure.from_env(env, timeouts, 4)
    assert provider is not None and provider.api_version == "v1"
    assert provider.url_for("anything") == "https://res.openai.azure.com/openai/v1/chat/completions"
    assert provider._headers["api-key"] == "k" and "Authorization" not in provider._headers
    assert list(provider.models()) == []

    provider = azure.from_env({**env, "OPENAI_API_VERSION": "2024-10-21"}, timeouts, 4)
    assert provider is not None and provider.api_version == "2024-10-21"
    provider = azure.from_env(
        {
            **env,
            "OPENAI_API_VERSION": "2024-10-21",
            "AZURE_OPENAI_API_VERSION": "preview",
            "JETTY_AZURE_MODELS": "my-gpt4o, o4-mini-prod",
        },
        timeouts,
        4,
    )
    assert provider is not None and provider.api_version == "preview"
    assert list(provider.models()) == ["my-gpt4o", "o4-mini-prod"]
    assert "'k'" not in repr(provider._config)
    assert azure.NAME == "azure" and azure.BARE_PATTERNS == ()
    with pytest.raises(ValueError, match="AZURE_OPENAI_API_VERSION"):
        azure.from_env({**env, "AZURE_OPENAI_API_VERSION": "yesterday"}, timeouts, 4)
    for bad in ("res.openai.azure.com", "https://u:p@res.test", "https://res.test/?x=1"):
        with pytest.raises(ValueError, match="AZURE_OPENAI_ENDPOINT"):
            azure.from_env({**env, "AZURE_OPENAI_ENDPOINT": bad}, timeouts, 4)


@pytest.mark.parametrize(
    ("endpoint", "version", "deployment", "url"),
    [
        (
            "https://r.openai.azure.com",
            "v1",
            "gpt-4o",
            "https://r.openai.azure.com/openai/v1/chat/completions",
        ),
        (
            "https://r.openai.azure.com/openai/v1/",
            "preview",
            "DeepSeek-R1",
            "https://r.openai.azure.com/openai/v1/chat/completions?api-version=preview",
        ),
        (
            "https://r.openai.azure.com/openai",
            "2024-10-21",
            "my-gpt4o",
            "https://r.openai.azure.com/openai/deployments/my-gpt4o/chat/completions?api-version=2024-10-21",
        ),
        (
            "https://apim.example.test/aoai/",
            "2025-04-01-preview",
            "gpt_4.1.mini",
            "https://apim.example.test/aoai/openai/deployments/gpt_4.1.mini/chat/completions"
            "?api-version=2025-04-01-preview",
        ),
    ],
)
def test_urls(endpoint: str, version: str, deployment: str, url: str) -> None:
    assert adapter(endpoint, version).url_for(deployment) == url


@pytest.mark.parametrize(
    "deployment",
    [
        "../../other",
        "a/b",
        "x?api-version=1",
        "x#y",
        "@evil.test",
        ".hidden",
        "",
        "a" * 65,
        "dep%2F..",
        "é",
    ],
)
def test_deployment_names_cannot_steer_the_url(deployment: str) -> None:
    provider = adapter("https://r.openai.azure.com", "2024-10-21")
    with pytest.raises(InvalidRequest) as info:
        provider.url_for(deployment)
    assert info.value.status == 400 and info.value.param == "model"


# --- the body policy per version -----------------------------------------------------------

BODY = {
    "model": "azure/my-gpt4o",
    "messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ],
    "stream_options": {"include_usage": False},
    "jetty": {"task": "t"},
    "reasoning_effort": "low",
}


@pytest.mark.parametrize(
    ("version", "stream_options", "first_role"),
    [
        ("v1", {"include_usage": True}, "developer"),
        ("preview", {"include_usage": True}, "developer"),
        ("2025-04-01-preview", {"include_usage": True}, "developer"),
        ("2024-10-21", {"include_usage": True}, "system"),
        ("2024-06-01", None, "system"),
    ],
)
def test_body_policy(version: str, stream_options: dict[str, bool] | None, first_role: str) -> None:
    provider = adapter("https://r.openai.azure.com", version)
    sent = orjson.loads(bytes(provider._body(call_for({**BODY, "stream": True}), stream=True)))
    assert sent["model"] == "my-gpt4o" and "jetty" not in sent and sent["stream"] is True
    assert sent.get("stream_options") == stream_options
    assert sent["messages"][0]["role"] == first_role
    # Everything else is forwarded as the client sent it (the OpenAI adapter's rule).
    assert sent["reasoning_effort"] == "low"
    plain = orjson.loads(bytes(provider._body(call_for(BODY), stream=False)))
    assert "stream" not in plain


# --- end to end against the fake Azure ------------------------------------------------------


@pytest.fixture(scope="module")
async def fake() -> AsyncIterator[FakeAzure]:
    upstream = FakeAzure(api_key=KEY)
    await upstream.start()
    yield upstream
    await upstream.stop()


@pytest.fixture(params=["v1", "2024-10-21"])
async def provider(
    fake: FakeAzure, request: pytest.FixtureRequest
) -> AsyncIterator[AzureOpenAIProvider]:
    fake.reset()
    fake.deployments = None
    instance = adapter(fake.endpoint, request.param)
    await instance.start()
    yield instance
    await instance.aclose()


async def collect(stream: AsyncIterator[ChatChunk]) -> list[ChatChunk]:
    return [chunk async for chunk in stream]


async def test_complete(provider: AzureOpenAIProvider, fake: FakeAzure) -> None:
    response = await provider.complete(call_for(chat(temperature=0.3)))
    (choice,) = response.choices
    assert choice.message.content == "Hello! How can I help you today?"
    assert choice.finish_reason == "stop" and response.model == AZURE_MODEL
    assert response.usage is not None and response.usage.total_tokens > 0
    # Azure's annotations survive as extra fields.
    extra = response.model_extra or {}
    assert extra["prompt_filter_results"][0]["prompt_index"] == 0
    assert (choice.model_extra or {})["content_filter_results"]["hate"]["filtered"] is False
    sent = fake.requests[-1]
    assert sent.headers["api-key"] == KEY and "Authorization" not in sent.headers
    assert sent.body["model"] == "my-gpt4o" and sent.body["temperature"] == 0.3
    if provider.api_version == "v1":
        assert sent.path == "/openai/v1/chat/completions"
    else:
        assert sent.path == "/openai/deployments/my-gpt4o/chat/completions?api-version=2024-10-21"


async def test_stream_drops_the_filter_preamble(
    provider: AzureOpenAIProvider, fake: FakeAzure
) -> None:
    fake.script("my-gpt4o", Script(text="alpha beta gamma"))
    body = chat(
        stream=True,
        messages=[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}],
    )
    chunks = await collect(provider.stream(call_for(body)))
    assert fake.requests[-1].body["stream_options"] == {"include_usage": True}
    first = chunks[0]
    assert first.id.startswith("chatcmpl-") and first.choices[0].delta.role == "assistant"
    assert all(c.choices or c.usage is not None for c in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    acc = accumulate(chunks)
    record = acc.response_record()
    assert record.content == "alpha beta gamma" and record.finish_reason == "stop"
    assert acc.upstream_id == first.id and acc.upstream_model == AZURE_MODEL


async def test_old_api_version_streams_without_stream_options(fake: FakeAzure) -> None:
    fake.reset()
    old = adapter(fake.endpoint, "2024-06-01")
    try:
        chunks = await collect(
            old.stream(call_for(chat(stream=True, stream_options={"include_usage": True})))
        )
    finally:
        await old.aclose()
    assert "stream_options" not in fake.requests[-1].body
    assert all(c.usage is None for c in chunks)
    assert accumulate(chunks).response_record().content == "Hello! How can I help you today?"


@pytest.mark.parametrize("stream", [False, True])
async def test_tools_and_images(
    provider: AzureOpenAIProvider, fake: FakeAzure, stream: bool
) -> None:
    fake.script("my-gpt4o", Script(tool_calls=[("get_weather", '{"city": "Paris"}')]))
    content = [
        {"type": "text", "text": "Where is this? Weather there?"},
        {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}},
    ]
    body = chat(tools=TOOLS, tool_choice="required", stream=stream)
    body["messages"] = [{"role": "user", "content": content}]
    if stream:
        record = accumulate(await collect(provider.stream(call_for(body)))).response_record()
    else:
        acc = Accumulator()
        acc.add_response(await provider.complete(call_for(body)))
        record = acc.response_record()
    assert fake.requests[-1].body["messages"][0]["content"] == content
    assert record.finish_reason == "tool_calls"
    (tool,) = record.tool_calls
    assert tool.name == "get_weather" and orjson.loads(tool.arguments) == {"city": "Paris"}


@pytest.mark.parametrize("stream", [False, True])
async def test_filtered_answer(
    provider: AzureOpenAIProvider, fake: FakeAzure, stream: bool
) -> None:
    fake.script("my-gpt4o", Script(text="Some partial", finish_reason="content_filter"))
    if stream:
        record = accumulate(
            await collect(provider.stream(call_for(chat(stream=True))))
        ).response_record()
        assert record.finish_reason == "content_filter" and record.content == "Some partial"
    else:
        response = await provider.complete(call_for(chat()))
        assert response.choices[0].finish_reason == "content_filter"


async def attempt(provider: AzureOpenAIProvider, body: dict[str, Any], stream: bool) -> ApiError:
    with pytest.raises(ApiError) as info:
        if stream:
            await collect(provider.stream(call_for(body)))
        else:
            await provider.complete(call_for(body))
    return info.value


@pytest.mark.parametrize("stream", [False, True])
async def test_error_mapping(provider: AzureOpenAIProvider, fake: FakeAzure, stream: bool) -> None:
    fake.script("filtered", Script(status=400, error_code="content_filter"))
    filtered = await attempt(provider, chat("azure/filtered"), stream)
    assert filtered.status == 400 and filtered.code == "content_filter"
    assert filtered.param == "prompt" and filtered.error_type == "invalid_request_error"
    assert "content management policy" in filtered.message

    limited = await attempt(provider, chat("azure/fake-429"), stream)
    assert isinstance(limited, RateLimited) and limited.retry_after == 7

    failed = await attempt(provider, chat("azure/fake-500"), stream)
    assert isinstance(failed, UpstreamError) and failed.status == 502

    fake.deployments = {"my-gpt4o"}
    missing = await attempt(provider, chat("azure/not-deployed"), stream)
    assert missing.status == 404 and missing.code == "model_not_found" and missing.param == "model"
    fake.deployments = None


async def test_dated_version_refuses_newer_arguments(fake: FakeAzure) -> None:
    fake.reset()
    dated = adapter(fake.endpoint, "2024-10-21")
    try:
        refused = await attempt(dated, chat(store=True), stream=False)
        unknown_version = adapter(fake.endpoint, "2023-01-01")
        not_found = await attempt(unknown_version, chat(), stream=False)
        await unknown_version.aclose()
    finally:
        await dated.aclose()
    assert (
        refused.status == 400 and refused.message == "Unrecognized request argument supplied: store"
    )
    assert not_found.status == 404 and not_found.message == "Resource not found"


async def test_rejected_key_is_a_502_without_the_key(fake: FakeAzure) -> None:
    wrong = adapter(fake.endpoint, key="azure-wrong-key-abcdefghijklmnop")
    try:
        error = await attempt(wrong, chat(), stream=True)
    finally:
        await wrong.aclose()
    assert error.status == 502 and error.code == "upstream_auth_failed"
    assert "abcdefghijklmnop" not in error.message and "mnop" not in error.message


async def test_cut_stream(provider: AzureOpenAIProvider) -> None:
    received: list[ChatChunk] = []
    with pytest.raises(UpstreamError) as info:
        async for chunk in provider.stream(call_for(chat("azure/fake-cut", stream=True))):
            received.append(chunk)
    assert info.value.code == "upstream_stream_interrupted"
    assert accumulate(received).response_record().content == "one two"


async def test_error_event_in_stream(provider: AzureOpenAIProvider) -> None:
    received: list[ChatChunk] = []
    with pytest.raises(ApiError) as info:
        async for chunk in provider.stream(call_for(chat("azure/fake-stream-error", stream=True))):
            received.append(chunk)
    assert info.value.status == 502
    assert accumulate(received).response_record().content == "one"


@pytest.mark.parametrize("stream", [False, True])
async def test_missing_usage(provider: AzureOpenAIProvider, stream: bool) -> None:
    if stream:
        chunks = await collect(provider.stream(call_for(chat("azure/fake-no-usage", stream=True))))
        assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)
    else:
        response = await provider.complete(call_for(chat("azure/fake-no-usage")))
        assert response.usage is None


async def test_leaving_a_stream_closes_the_upstream_request(
    provider: AzureOpenAIProvider, fake: FakeAzure
) -> None:
    fake.script("long", Script(text="word " * 50, chunk_delay=0.05))
    async with aclosing(provider.stream(call_for(chat("azure/long", stream=True)))) as chunks:
        async for _ in chunks:
            break
    await asyncio.wait_for(fake.disconnected.wait(), 1.0)
    assert fake.disconnects[-1][0] == "long"


async def test_first_byte_timeout(fake: FakeAzure) -> None:
    fake.script("slow", Script(first_byte_delay=1.0))
    slow = adapter(fake.endpoint, first_byte=0.2)
    try:
        error = await attempt(slow, chat("azure/slow"), stream=False)
    finally:
        await slow.aclose()
    assert isinstance(error, UpstreamTimeout) and error.status == 504
