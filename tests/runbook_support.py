"""The stack, the scripted provider fakes and the helpers of the runbook tests
(the real agent CLIs in the real local sandbox); shared by every module that runs
an agent end to end."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from openai import AsyncOpenAI

from jetty_cli.testing import StackFactory, TestStack, call
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.gemini_upstream import FakeGemini
from tests.fakes.openai_upstream import FakeUpstream
from tests.fakes.scenario_claude_code import ReadSummarizeWrite as ClaudeScenario
from tests.fakes.scenario_claude_code import summarize_csv
from tests.fakes.scenario_codex import codex_scenario
from tests.fakes.scenario_codex import summarise as codex_summary
from tests.fakes.scenario_gemini_cli import ReadSummarizeWrite as GeminiScenario
from tests.fakes.scenario_gemini_cli import summarize_csv as gemini_summary
from tests.fakes.scenario_opencode import ReadSummarizeWrite as OpencodeScenario
from tests.openapi import validate

ANTHROPIC_KEY = "sk-ant-runbook-test"
OPENAI_KEY = "sk-openai-runbook-test"
GEMINI_KEY = "gemini-runbook-test"
WORKSPACE = "/workspace"
COLLECTION = "default"


@dataclass(frozen=True)
class Agent:
    name: str
    model: str
    provider: str
    #: the summary its scenario writes for a CSV text (each fake computes its own)
    summary: Callable[[str], str]


AGENTS = [
    Agent("claude-code", "claude-sonnet-4-6", "anthropic", summarize_csv),
    Agent("codex", "gpt-4o", "openai", lambda text: codex_summary(text).markdown()),
    Agent("gemini-cli", "gemini-2.5-pro", "gemini", gemini_summary),
    Agent("opencode", "gpt-4.1-mini", "openai", summarize_csv),
]


@dataclass
class Fakes:
    anthropic: FakeAnthropic
    openai: FakeUpstream
    gemini: FakeGemini

    def script(self, agent: Agent) -> None:
        if agent.name == "opencode":
            self.openai.respond_with(agent.model, OpencodeScenario(WORKSPACE))
        elif agent.provider == "anthropic":
            self.anthropic.respond_with(agent.model, ClaudeScenario(WORKSPACE))
        elif agent.provider == "openai":
            self.openai.respond_with(agent.model, codex_scenario(WORKSPACE))
        else:
            self.gemini.respond_with(agent.model, GeminiScenario(WORKSPACE))

    def calls(self, agent: Agent) -> int:
        fake = {"anthropic": self.anthropic, "openai": self.openai, "gemini": self.gemini}
        return len(fake[agent.provider].requests)

    def reset(self) -> None:
        self.anthropic.reset()
        self.openai.reset()
        self.gemini.reset()


@pytest.fixture(scope="module")
async def fakes() -> AsyncIterator[Fakes]:
    found = Fakes(FakeAnthropic(ANTHROPIC_KEY), FakeUpstream(OPENAI_KEY), FakeGemini(GEMINI_KEY))
    for fake in (found.anthropic, found.openai, found.gemini):
        await fake.start()
    yield found
    for fake in (found.anthropic, found.openai, found.gemini):
        await fake.stop()


@pytest.fixture(scope="module")
def runbooks(stack_factory: StackFactory, fakes: Fakes) -> Iterator[TestStack]:
    stack = stack_factory(
        env={
            "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
            "ANTHROPIC_BASE_URL": fakes.anthropic.base_url,
            "OPENAI_API_KEY": OPENAI_KEY,
            "OPENAI_BASE_URL": fakes.openai.base_url,
            "GEMINI_API_KEY": GEMINI_KEY,
            "GEMINI_BASE_URL": fakes.gemini.base_url,
            "JETTY_RUNNER_ACK_WAIT": "3",
            "JETTY_RUNNER_CONCURRENCY": "2",
            "JETTY_RUNBOOK_KEEPALIVE": "1",
        }
    )
    yield stack
    stack.close()


@pytest.fixture
def fake(fakes: Fakes) -> Fakes:
    fakes.reset()
    return fakes


def csv_for(agent: Agent) -> tuple[bytes, str]:
    """A fresh random CSV and the summary ``agent``'s scenario will write for it."""
    rng = random.Random()
    rows = [(f"item{i}", rng.randint(1, 500), rng.randint(1, 9)) for i in range(rng.randint(3, 7))]
    text = "name,price,qty\n" + "".join(f"{n},{p},{q}\n" for n, p, q in rows)
    return text.encode(), agent.summary(text)


async def upload_file(stack: TestStack, data: bytes, name: str = "data.csv") -> str:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=name, content_type="text/csv")
    form.add_field("collection", COLLECTION)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            stack.base_url + "/api/v1/files/upload",
            data=form,
            headers={"Authorization": f"Bearer {stack.token}"},
        ) as response,
    ):
        assert response.status == 200, await response.text()
        path = (await response.json())["path"]
        assert isinstance(path, str)
        return path


def jetty_body(agent: Agent, task: str, file_paths: list[str], **more: Any) -> dict[str, Any]:
    return {
        "jetty": {
            "runbook": True,
            "collection": COLLECTION,
            "task": task,
            "agent": agent.name,
            "file_paths": file_paths,
            **more,
        }
    }


MESSAGES: list[Any] = [
    {"role": "system", "content": "Read uploads/data.csv and write results/summary.md."},
    {"role": "user", "content": "Summarise the data."},
]


@dataclass
class Progress:
    content: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    first: dict[str, Any] | None = None
    last: dict[str, Any] | None = None
    finish_reason: str | None = None


async def stream_run(stack: TestStack, agent: Agent, body_extra: dict[str, Any]) -> Progress:
    client = AsyncOpenAI(base_url=stack.base_url + "/v1", api_key=stack.token, max_retries=0)
    progress = Progress()
    stream = await client.chat.completions.create(
        model=agent.model, messages=MESSAGES, stream=True, extra_body=body_extra, timeout=240
    )
    async for chunk in stream:
        validate("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
        extra = chunk.model_extra or {}
        if "jetty" in extra:
            progress.events.append(extra["jetty"])
        if "jetty_metadata" in extra:
            if progress.first is None:
                progress.first = extra["jetty_metadata"]
            progress.last = extra["jetty_metadata"]
        for choice in chunk.choices:
            progress.content += choice.delta.content or ""
            progress.finish_reason = choice.finish_reason or progress.finish_reason
    await client.close()
    return progress


async def download_url(stack: TestStack, url: str) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={"Authorization": f"Bearer {stack.token}"}) as response,
    ):
        return response.status, await response.read()


def get_trajectory(stack: TestStack, trajectory_id: str) -> dict[str, Any]:
    status, _, view = call(stack.base_url + f"/api/v1/trajectories/{trajectory_id}", stack.token)
    assert status == 200, view
    assert isinstance(view, dict)
    return view


async def wait_until(check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(check)
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.2)


async def start_run(
    stack: TestStack, agent: Agent, file_paths: list[str] | None = None, **jetty: Any
) -> str:
    """Start a run and return its id (read from the first SSE chunk; the stream is
    then closed, which leaves the run going)."""
    jetty_block = jetty_body(agent, "failures", file_paths or [], **jetty)
    body = {"model": agent.model, "messages": MESSAGES, **jetty_block}
    url = stack.base_url + "/v1/chat/completions"
    headers = {"Authorization": f"Bearer {stack.token}"}
    # The SSE's first chunk names the run; the stream is then left to the run.
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body | {"stream": True}, headers=headers) as response,
    ):
        assert response.status == 200, await response.text()
        async for line in response.content:
            if line.startswith(b"data: {"):
                doc = orjson.loads(line[6:])
                trajectory_id = doc["jetty_metadata"]["trajectory_id"]
                assert isinstance(trajectory_id, str)
                return trajectory_id
    raise AssertionError("no first chunk")


async def wait_ended(stack: TestStack, trajectory_id: str, timeout: float = 90.0) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        view = get_trajectory(stack, trajectory_id)
        return view if view["status"] in ("completed", "failed", "cancelled") else None

    view = await wait_until(check, timeout)
    assert view is not None, f"run {trajectory_id} did not end"
    assert isinstance(view, dict)
    return view


async def wait_running(stack: TestStack, trajectory_id: str) -> None:
    def check() -> bool:
        return bool(get_trajectory(stack, trajectory_id)["status"] == "running")

    assert await wait_until(check, 60), "run never started"
