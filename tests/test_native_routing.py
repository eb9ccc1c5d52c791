"""Bare model names route to the native adapters through the whole stack: the
OpenAI SDK talks to the gateway, the proxy translates to Anthropic, Gemini or
Cohere (local fakes of those APIs), and the call is recorded with its provider."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from jetty_cli.testing import StackFactory, TestStack
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.cohere_upstream import FakeCohere
from tests.fakes.gemini_upstream import FakeGemini
from tests.helpers import fetch_trajectory

ANTHROPIC_KEY, GEMINI_KEY, COHERE_KEY = "sk-ant-test-1", "gem-test-1", "co-test-1"


@pytest.fixture(scope="module")
async def fakes() -> AsyncIterator[dict[str, Any]]:
    anthropic, gemini, cohere = (
        FakeAnthropic(api_key=ANTHROPIC_KEY),
        FakeGemini(api_key=GEMINI_KEY),
        FakeCohere(api_key=COHERE_KEY),
    )
    for fake in (anthropic, gemini, cohere):
        await fake.start()
    yield {"anthropic": anthropic, "gemini": gemini, "cohere": cohere}
    for fake in (anthropic, gemini, cohere):
        await fake.stop()


@pytest.fixture(scope="module")
def native_stack(stack_factory: StackFactory, fakes: dict[str, Any]) -> TestStack:
    return stack_factory(
        env={
            "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
            "ANTHROPIC_BASE_URL": fakes["anthropic"].base_url,
            "GEMINI_API_KEY": GEMINI_KEY,
            "GEMINI_BASE_URL": fakes["gemini"].base_url,
            "COHERE_API_KEY": COHERE_KEY,
            "COHERE_BASE_URL": fakes["cohere"].base_url,
        }
    )


@pytest.mark.parametrize(
    ("model", "provider"),
    [
        ("claude-sonnet-4-5", "anthropic"),
        ("gemini-2.5-flash", "gemini"),
        ("command-a-03-2025", "cohere"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_bare_names_route_to_native_adapters(
    native_stack: TestStack, fakes: dict[str, Any], model: str, provider: str, stream: bool
) -> None:
    fake = fakes[provider]
    fake.reset()
    async with openai.AsyncOpenAI(
        base_url=native_stack.base_url + "/v1", api_key=native_stack.token, max_retries=0
    ) as client:
        messages: list[Any] = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello"},
        ]
        if stream:
            chunks = [
                c
                async for c in await client.chat.completions.create(
                    model=model,
                    messages=messages,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            ]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            usage = chunks[-1].usage
            trajectory_id = (chunks[0].model_extra or {})["jetty_metadata"]["trajectory_id"]
        else:
            completion = await client.chat.completions.create(model=model, messages=messages)
            text = completion.choices[0].message.content or ""
            usage = completion.usage
            trajectory_id = (completion.model_extra or {})["jetty_metadata"]["trajectory_id"]
    assert text == "Hello! How can I help you today?"
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert len(fake.requests) == 1  # the native API was called, once
    trajectory = await fetch_trajectory(native_stack, trajectory_id)
    assert trajectory["status"] == "completed"
    assert trajectory["steps"][0]["provider"] == provider
    assert trajectory["usage"]["total_tokens"] == usage.total_tokens


async def test_unconfigured_native_family_says_what_to_set(stack: TestStack) -> None:
    async with openai.AsyncOpenAI(
        base_url=stack.base_url + "/v1", api_key=stack.token, max_retries=0
    ) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(
                model="claude-sonnet-4-5", messages=[{"role": "user", "content": "x"}]
            )
    assert "ANTHROPIC_API_KEY" in str(caught.value)
