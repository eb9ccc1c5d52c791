"""Passthrough to an OpenAI-compatible upstream through the whole stack: what is
forwarded, how upstream failures reach the client, slow and cut streams, and a
client that disconnects mid-stream. The upstream is the local fake
(tests/fakes/openai_upstream.py); everything else is real."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest

from jetty_cli.testing import StackFactory, TestStack
from tests.fakes.openai_upstream import FakeUpstream, Script
from tests.helpers import fetch_trajectory

KEY = "sk-upstream-secret-123456"
FIRST_BYTE_TIMEOUT = 1.5


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream(api_key=KEY)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture(scope="module")
def upstream_stack(stack_factory: StackFactory, upstream: FakeUpstream) -> TestStack:
    return stack_factory(
        env={
            "OPENAI_API_KEY": KEY,
            "OPENAI_BASE_URL": upstream.base_url,
            "JETTY_UPSTREAM_FIRST_BYTE_TIMEOUT": str(FIRST_BYTE_TIMEOUT),
        }
    )


@pytest.fixture
async def client(
    upstream_stack: TestStack, upstream: FakeUpstream
) -> AsyncIterator[openai.AsyncOpenAI]:
    upstream.reset()
    async with openai.AsyncOpenAI(
        base_url=upstream_stack.base_url + "/v1", api_key=upstream_stack.token, max_retries=0
    ) as c:
        yield c


async def test_forwards_to_upstream_without_jetty_fields(
    client: openai.AsyncOpenAI, upstream: FakeUpstream, upstream_stack: TestStack
) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "Hello"}],
        temperature=0.5,
        seed=7,
        extra_body={"jetty": {"task": "fwd"}, "logit_bias": {"50256": -100}},
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello! How can I help you today?"
    (sent,) = upstream.requests
    assert sent.body["model"] == "gpt-4o"
    assert "jetty" not in sent.body
    assert sent.body["logit_bias"] == {"50256": -100}  # unknown-to-us fields pass through
    assert sent.body["seed"] == 7 and sent.body["temperature"] == 0.5
    assert sent.headers["Authorization"] == f"Bearer {KEY}"
    assert upstream_stack.token not in str(sent.headers) + str(sent.body)

    trajectory = await fetch_trajectory(upstream_stack, raw.headers["x-jetty-trajectory-id"])
    assert trajectory["status"] == "completed"
    assert trajectory["task"] == "fwd"
    step = trajectory["steps"][0]
    assert step["provider"] == "openai"
    assert step["response"]["upstream_id"] == completion.id
    assert completion.usage is not None
    assert trajectory["usage"]["total_tokens"] == completion.usage.total_tokens
    assert KEY not in str(trajectory)


async def test_explicit_provider_prefix_and_streaming(
    client: openai.AsyncOpenAI, upstream: FakeUpstream, upstream_stack: TestStack
) -> None:
    upstream.script("gpt-4o-mini", Script(text="alpha beta gamma delta", chunk_delay=0.05))
    stream = await client.chat.completions.create(
        model="openai/gpt-4o-mini",
        messages=[{"role": "user", "content": "go"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "alpha beta gamma delta"
    )
    assert chunks[-1].usage is not None
    assert upstream.requests[0].body["model"] == "gpt-4o-mini"
    meta = (chunks[0].model_extra or {})["jetty_metadata"]
    trajectory = await fetch_trajectory(upstream_stack, meta["trajectory_id"])
    assert trajectory["status"] == "completed"
    assert trajectory["ttft_ms"] <= trajectory["latency_ms"]
    assert trajectory["latency_ms"] >= 150  # three chunk delays happened inside it


@pytest.mark.parametrize(
    ("model", "status", "error_class"),
    [
        ("fake-429", 429, openai.RateLimitError),
        ("fake-500", 502, openai.APIStatusError),
        ("fake-400", 400, openai.BadRequestError),
    ],
)
async def test_upstream_errors_map_to_openai_errors(
    client: openai.AsyncOpenAI,
    upstream_stack: TestStack,
    model: str,
    status: int,
    error_class: type[openai.APIStatusError],
) -> None:
    with pytest.raises(error_class) as caught:
        await client.chat.completions.create(
            model=f"openai/{model}", messages=[{"role": "user", "content": "x"}]
        )
    error = caught.value
    assert error.status_code == status
    body = error.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}
    if status == 429:
        assert error.response.headers["retry-after"] == "7"
    trajectory_id = error.response.headers["x-jetty-trajectory-id"]
    trajectory = await fetch_trajectory(upstream_stack, trajectory_id)
    assert trajectory["status"] == "failed"
    assert trajectory["error"]["status"] == status


async def test_slow_upstream_times_out_with_504(
    client: openai.AsyncOpenAI, upstream: FakeUpstream, upstream_stack: TestStack
) -> None:
    upstream.script("slowpoke", Script(first_byte_delay=FIRST_BYTE_TIMEOUT + 2))
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(
            model="openai/slowpoke", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.status_code == 504
    assert time.monotonic() - started < FIRST_BYTE_TIMEOUT + 1.5
    trajectory = await fetch_trajectory(
        upstream_stack, caught.value.response.headers["x-jetty-trajectory-id"]
    )
    assert trajectory["status"] == "failed" and trajectory["error"]["status"] == 504


async def test_stream_cut_in_the_middle_ends_with_an_error_event(
    upstream_stack: TestStack, upstream: FakeUpstream
) -> None:
    upstream.reset()
    events = await _raw_sse(upstream_stack, "openai/fake-cut")
    assert events[-1] == "[DONE]"
    assert '"error"' in events[-2]
    seen = "".join(
        choice["delta"].get("content") or ""
        for event in events[:-2]
        for choice in json.loads(event)["choices"]
    )
    assert seen.startswith("one")
    trajectory_id = _first_metadata(events)["trajectory_id"]
    trajectory = await fetch_trajectory(upstream_stack, trajectory_id)
    assert trajectory["status"] == "failed"
    # The record holds exactly what the client received before the cut.
    assert trajectory["steps"][0]["response"]["content"] == seen
    assert trajectory["error"]["status"] == 502


async def test_client_disconnect_cancels_upstream_and_is_recorded(
    upstream_stack: TestStack, upstream: FakeUpstream
) -> None:
    upstream.reset()
    upstream.script("long-story", Script(text=" ".join(["word"] * 200), chunk_delay=0.1))
    body = {
        "model": "openai/long-story",
        "messages": [{"role": "user", "content": "tell me"}],
        "stream": True,
    }
    trajectory_id = ""
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            upstream_stack.base_url + "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {upstream_stack.token}"},
        )
        trajectory_id = response.headers["X-Jetty-Trajectory-Id"]
        received = 0
        async for line in response.content:
            if line.startswith(b"data: "):
                received += 1
            if received >= 3:
                break
        closed_at = time.time()
        response.close()  # drop the connection mid-stream
    await asyncio.wait_for(upstream.disconnected.wait(), timeout=5)
    (_, upstream_gone_at) = upstream.disconnects[0]
    assert upstream_gone_at - closed_at < 1.0

    deadline = time.monotonic() + 10
    while True:
        trajectory = await fetch_trajectory(upstream_stack, trajectory_id)
        if trajectory["status"] != "running" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert trajectory["status"] == "cancelled"
    content = trajectory["steps"][0]["response"]["content"]
    assert content.startswith("word word")
    assert len(content.split()) < 200


async def _raw_sse(stack: TestStack, model: str) -> list[str]:
    body = {"model": model, "messages": [{"role": "user", "content": "x"}], "stream": True}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            stack.base_url + "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {stack.token}"},
        ) as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        raw = (await response.read()).decode()
    return [line[len("data: ") :] for line in raw.split("\n\n") if line.startswith("data: ")]


def _first_metadata(events: list[str]) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads(events[0])["jetty_metadata"]
    return meta


async def test_native_only_fields_never_reach_an_openai_upstream(
    upstream_stack: TestStack, upstream: FakeUpstream
) -> None:
    """Anthropic or Gemini requests routed to OpenAI carry fields only their native
    APIs know; the strict OpenAI API would answer 400, so they are dropped."""
    upstream.reset()
    body = {
        "model": "openai/gpt-4o-mini",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {}}]},
            {"role": "assistant", "content": "ok", "thinking_blocks": [{"type": "thinking"}]},
            {"role": "user", "content": "again", "cache_control": {"type": "ephemeral"}},
        ],
        "top_k": 40,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "anthropic_beta": ["context-1m-2025-08-07"],
        "output_config": {"effort": "low"},
        "seed": 3,
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            upstream_stack.base_url + "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {upstream_stack.token}"},
        ) as response,
    ):
        assert response.status == 200, await response.text()
    (sent,) = upstream.requests
    assert {"top_k", "thinking", "anthropic_beta", "output_config"}.isdisjoint(sent.body)
    assert sent.body["seed"] == 3  # OpenAI fields still pass through
    assert "thinking_blocks" not in sent.body["messages"][1]
    assert "cache_control" not in sent.body["messages"][2]
    assert "cache_control" not in sent.body["messages"][0]["content"][0]
