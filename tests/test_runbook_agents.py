"""Runbooks end to end: the real agent CLIs in the real local sandbox, on a real
stack (NATS, PostgreSQL, the S3-compatible store, every service), each agent's model
calls answered by a scripted fake of its provider behind our gateway, driven by the
official OpenAI SDK.

Each agent uploads-reads-summarises-writes: it reads ``uploads/data.csv`` and writes
``results/summary.md``, whose content the fake computes from the CSV text the agent
sent back — so the artifact proves the agent read the input inside its sandbox.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import nats
import nats.errors
import nats.js.errors
import orjson
import pytest
from openai import AsyncOpenAI

from jetty_cli.testing import TestStack, call
from shared import subjects
from shared.bus import EventPublisher
from shared.events.completion import ErrorRecord
from shared.events.runbook import RunbookFailed
from shared.runs import RunStates
from tests.fakes.anthropic_upstream import Script as AnthropicScript
from tests.fakes.openai_upstream import Script as OpenAIScript
from tests.fakes.scenario_claude_code import file_text_from_read, summarize_csv
from tests.openapi import validate
from tests.runbook_support import (  # the stack, fakes and helpers of the runbook tests
    AGENTS,
    COLLECTION,
    MESSAGES,
    WORKSPACE,
    Agent,
    Fakes,
    csv_for,
    download_url,
    fake,
    fakes,
    get_trajectory,
    jetty_body,
    runbooks,
    start_run,
    stream_run,
    upload_file,
    wait_ended,
    wait_running,
    wait_until,
)

__all__ = ["fake", "fakes", "runbooks"]  # fixtures this module's tests use

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("agent", AGENTS, ids=[a.name for a in AGENTS])
async def test_an_agent_summarises_an_uploaded_csv(
    runbooks: TestStack, fake: Fakes, agent: Agent
) -> None:
    data, expected = csv_for(agent)
    path = await upload_file(runbooks, data)
    fake.script(agent)
    progress = await stream_run(runbooks, agent, jetty_body(agent, f"summary-{agent.name}", [path]))

    # The stream: pending first, running, steps, the artifact, then the final metadata.
    assert progress.first is not None and progress.first["status"] == "pending"
    final = progress.last
    assert final is not None
    assert final["status"] == "completed", final["error"]
    assert progress.finish_reason == "stop"
    kinds = [e["type"] for e in progress.events]
    assert "step" in kinds and "artifact" in kinds
    statuses = [e["status"] for e in progress.events if e["type"] == "status"]
    assert statuses[0] == "pending" and "running" in statuses and statuses[-1] == "completed"
    tool_calls = [e["step"] for e in progress.events if e["type"] == "step"]
    assert any(s["kind"] == "tool_call" for s in tool_calls)
    assert "Artifact: results/summary.md" in progress.content
    # The adapter's progress lines reach the client as content.
    assert "→ " in progress.content and "results/summary.md" in progress.content

    # The artifact: downloadable, and computed from the CSV the agent read.
    artifacts = {a["path"]: a for a in final["artifacts"]}
    assert "results/summary.md" in artifacts, artifacts
    assert "uploads/data.csv" not in artifacts  # unchanged input: not an artifact
    status, content = await download_url(runbooks, artifacts["results/summary.md"]["url"])
    assert status == 200
    assert content.decode().strip() == expected.strip()
    # A short-lived presigned URL reaches the same bytes with no token at all...
    url = artifacts["results/summary.md"]["url"]
    status, _, presigned = await asyncio.to_thread(call, url + "?presign=1", runbooks.token)
    assert status == 200, presigned
    async with aiohttp.ClientSession() as session, session.get(presigned["url"]) as response:
        assert response.status == 200
        assert await response.read() == content
    # ...and a token of another collection does not see the artifact at all.
    other = await runbooks.create_token("elsewhere")
    status, _, doc = await asyncio.to_thread(call, url, other)
    assert status == 404 and doc["error"]["code"] == "not_found"

    # Usage and cost: the sum of the agent's model calls, each recorded.
    model_calls = fake.calls(agent)
    assert final["model_calls"] == model_calls >= 3
    assert final["usage"]["total_tokens"] > 0
    assert final["cost_usd"] is not None and final["cost_usd"] > 0
    assert final["timing"]["run_ms"] > 0

    # The trajectory: every step, the inner model calls with usage, the artifact.
    view = get_trajectory(runbooks, final["trajectory_id"])
    assert view["status"] == "completed" and view["mode"] == "runbook"
    assert view["task"] == f"summary-{agent.name}"
    completions = [s for s in view["steps"] if s["kind"] == "completion"]
    assert len(completions) == model_calls
    assert all(s["usage"]["total_tokens"] > 0 for s in completions)
    assert view["usage"]["total_tokens"] == sum(s["usage"]["total_tokens"] for s in completions)
    assert view["usage"]["total_tokens"] == final["usage"]["total_tokens"]
    assert view["cost_usd"] == pytest.approx(final["cost_usd"])
    agent_kinds = {s["kind"] for s in view["steps"]}
    assert {"tool_call", "tool_result", "message"} <= agent_kinds
    indexes = [s["index"] for s in view["steps"]]
    assert indexes == sorted(indexes) and len(set(indexes)) == len(indexes)
    [artifact] = [a for a in view["artifacts"] if a["path"] == "results/summary.md"]
    assert artifact["url"] == artifacts["results/summary.md"]["url"]
    assert artifact["sha256"] == artifacts["results/summary.md"]["sha256"]

    # The agent's run-scoped token died with the run.
    assert await _run_tokens(runbooks, final["trajectory_id"]) == []


async def _run_tokens(stack: TestStack, trajectory_id: str) -> list[str]:
    """Hashes of the live tokens scoped to ``trajectory_id``."""
    nc = await nats.connect(stack.nats_url)
    try:
        kv = await nc.jetstream().key_value(subjects.TOKENS_BUCKET)
        try:
            keys = await kv.keys()
        except nats.js.errors.NoKeysError:
            return []
        found = []
        for key in keys:
            entry = await kv.get(key)
            if entry.value and orjson.loads(entry.value).get("trajectory_id") == trajectory_id:
                found.append(key)
        return found
    finally:
        await nc.close()


async def test_stream_false_waits_for_the_result(runbooks: TestStack, fake: Fakes) -> None:
    agent = AGENTS[0]
    data, expected = csv_for(agent)
    path = await upload_file(runbooks, data)
    fake.script(agent)
    client = AsyncOpenAI(base_url=runbooks.base_url + "/v1", api_key=runbooks.token)
    completion = await client.chat.completions.create(
        model=agent.model,
        messages=MESSAGES,
        extra_body=jetty_body(agent, "wait", [path]),
        timeout=240,
    )
    await client.close()
    meta = (completion.model_extra or {})["jetty_metadata"]
    assert meta["status"] == "completed"
    assert completion.choices[0].message.content and "results/summary.md" in (
        completion.choices[0].message.content
    )
    assert completion.usage is not None and completion.usage.total_tokens > 0
    [artifact] = [a for a in meta["artifacts"] if a["path"] == "results/summary.md"]
    status, content = await download_url(runbooks, artifact["url"])
    assert status == 200 and content.decode().strip() == expected.strip()


# --- failure paths (claude-code: the quickest of the three to start) ---------------


CLAUDE = AGENTS[0]


async def test_an_agent_that_exits_non_zero_fails_the_run(runbooks: TestStack, fake: Fakes) -> None:
    fake.anthropic.script(
        CLAUDE.model,
        AnthropicScript(status=400, error_type="invalid_request_error", error_message="bad"),
    )
    view = await wait_ended(runbooks, await start_run(runbooks, CLAUDE))
    assert view["status"] == "failed"
    assert view["error"]["code"] == "agent_failed"
    assert "exited with code" in view["error"]["message"]


async def test_a_run_past_its_timeout_fails(runbooks: TestStack, fake: Fakes) -> None:
    fake.anthropic.script(CLAUDE.model, AnthropicScript(first_byte_delay=60))
    view = await wait_ended(runbooks, await start_run(runbooks, CLAUDE, timeout_s=4))
    assert view["status"] == "failed"
    assert view["error"]["code"] == "timeout"


async def test_cancel_stops_a_running_agent(runbooks: TestStack, fake: Fakes) -> None:
    fake.anthropic.script(CLAUDE.model, AnthropicScript(first_byte_delay=60))
    trajectory_id = await start_run(runbooks, CLAUDE)
    await wait_running(runbooks, trajectory_id)
    assert len(await _run_tokens(runbooks, trajectory_id)) == 1  # the agent's, while it runs
    url = runbooks.base_url + f"/api/v1/trajectories/{trajectory_id}/cancel"
    status, _, answer = await asyncio.to_thread(call, url, runbooks.token, {})
    assert (status, answer["status"]) == (200, "cancelled"), runbooks.log_tails(("runner",))
    view = await wait_ended(runbooks, trajectory_id)
    assert view["status"] == "cancelled"
    assert await _run_tokens(runbooks, trajectory_id) == []


async def test_a_spent_budget_refuses_the_next_call_and_fails_the_run(
    runbooks: TestStack, fake: Fakes
) -> None:
    fake.script(CLAUDE)
    data, _ = csv_for(CLAUDE)
    path = await upload_file(runbooks, data)
    body = {
        "model": CLAUDE.model,
        "messages": MESSAGES,
        **jetty_body(CLAUDE, "budget", [path], budget={"max_tokens": 1}),
    }
    status, _, doc = await asyncio.to_thread(
        call, runbooks.base_url + "/v1/chat/completions", runbooks.token, body
    )
    assert status == 200, doc
    validate("CreateChatCompletionResponse", doc)
    meta = doc["jetty_metadata"]
    assert meta["status"] == "failed"
    assert meta["error"]["code"] == "budget_exceeded"
    assert meta["model_calls"] == 1  # the first call ran; the next was refused
    view = get_trajectory(runbooks, meta["trajectory_id"])
    assert view["status"] == "failed" and view["error"]["code"] == "budget_exceeded"


async def test_a_runner_killed_mid_run_leaves_no_run_stuck(
    runbooks: TestStack, fake: Fakes
) -> None:
    fake.anthropic.script(CLAUDE.model, AnthropicScript(first_byte_delay=60))
    trajectory_id = await start_run(runbooks, CLAUDE)
    await wait_running(runbooks, trajectory_id)
    runbooks.kill("runner")
    await runbooks.restart_async("runner")
    view = await wait_ended(runbooks, trajectory_id)
    assert view["status"] == "failed"
    assert view["error"]["code"] == "runner_lost"


async def test_a_queued_run_survives_a_runner_restart(runbooks: TestStack, fake: Fakes) -> None:
    fake.script(CLAUDE)
    data, expected = csv_for(CLAUDE)
    path = await upload_file(runbooks, data)
    runbooks.kill("runner")
    trajectory_id = await start_run(runbooks, CLAUDE, file_paths=[path])
    assert get_trajectory(runbooks, trajectory_id)["status"] == "pending"
    await runbooks.restart_async("runner")
    view = await wait_ended(runbooks, trajectory_id)
    assert view["status"] == "completed", view
    [artifact] = [
        a for a in view["artifacts"] if a.get("path", a.get("name")) == "results/summary.md"
    ]
    status, content = await download_url(runbooks, artifact["url"])
    assert status == 200 and content.decode().strip() == expected.strip()


async def test_a_quiet_run_streams_keepalives_and_ends_its_stream_with_the_failure(
    runbooks: TestStack, fake: Fakes
) -> None:
    """The stack sends a keep-alive comment after 1 s of quiet; a failed run still
    ends its SSE with a final chunk (status and error in jetty_metadata) and [DONE]."""
    fake.anthropic.script(CLAUDE.model, AnthropicScript(first_byte_delay=60))
    body = {
        "model": CLAUDE.model,
        "messages": MESSAGES,
        "stream": True,
        **jetty_body(CLAUDE, "quiet", [], timeout_s=3),
    }
    lines: list[bytes] = []
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            runbooks.base_url + "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {runbooks.token}"},
        ) as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        async for line in response.content:
            if line.strip():
                lines.append(line.strip())
    assert b": keep-alive" in lines
    assert lines[-1] == b"data: [DONE]"
    for line in lines:
        if line.startswith(b"data: {"):
            # Every chunk is a valid OpenAI chunk (plus our extra fields).
            validate("CreateChatCompletionStreamResponse", orjson.loads(line[6:]))
    final = orjson.loads(lines[-2][len(b"data: ") :])
    assert final["object"] == "chat.completion.chunk"
    assert final["choices"][0]["finish_reason"] == "stop"
    assert final["jetty_metadata"]["status"] == "failed"
    assert final["jetty_metadata"]["error"]["code"] == "timeout"


async def test_a_run_ended_elsewhere_is_stopped_and_not_ended_twice(
    runbooks: TestStack, fake: Fakes
) -> None:
    """A runner that missed its heartbeats may find its run failed by another runner
    (``runner_lost``): it stops the agent and publishes no second end event."""
    fake.anthropic.script(CLAUDE.model, AnthropicScript(first_byte_delay=60))
    trajectory_id = await start_run(runbooks, CLAUDE)

    def call_in_flight() -> bool:
        steps = get_trajectory(runbooks, trajectory_id)["steps"]
        return any(s["kind"] == "completion" and s["status"] == "running" for s in steps)

    assert await wait_until(call_in_flight, 30)
    nc = await nats.connect(runbooks.nats_url)
    try:
        js = nc.jetstream()
        state = await RunStates(js).update(
            trajectory_id, lambda s: s.model_copy(update={"status": "failed"})
        )
        lost = RunbookFailed(
            task=state.task,
            ended_at=datetime.now(UTC),
            error=ErrorRecord(status=500, type="server_error", code="runner_lost", message="x"),
        )
        await EventPublisher(nc, js, "test/elsewhere", 256 * 1024).publish(
            COLLECTION, trajectory_id, lost
        )
        view = await wait_ended(runbooks, trajectory_id)
        assert view["error"]["code"] == "runner_lost"

        # The agent is stopped: its model call in flight is cancelled when its
        # connection goes. And the run's runner publishes no end of its own.
        def call_cancelled() -> bool:
            steps = get_trajectory(runbooks, trajectory_id)["steps"]
            return any(s["kind"] == "completion" and s["status"] == "cancelled" for s in steps)

        assert await wait_until(call_cancelled, 30), "the agent was not stopped"
        await asyncio.sleep(2)
        ends = []
        sub = await js.subscribe(subjects.collection_events(COLLECTION), ordered_consumer=True)
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=1)
                except nats.errors.TimeoutError:
                    break
                doc = orjson.loads(msg.data)
                if doc["trajectory_id"] == trajectory_id and doc["type"] in (
                    "runbook.completed",
                    "runbook.failed",
                    "runbook.cancelled",
                ):
                    ends.append(doc["type"])
        finally:
            await sub.unsubscribe()
        assert ends == ["runbook.failed"]
    finally:
        await nc.close()


async def test_a_long_runbook_travels_by_claim_check_and_runs(
    runbooks: TestStack, fake: Fakes
) -> None:
    """A runbook too large for one NATS message (its event goes by claim check) is
    taken by the runner and reaches the agent whole."""
    fake.script(CLAUDE)
    data, expected = csv_for(CLAUDE)
    path = await upload_file(runbooks, data)
    filler = "".join(f"Rule {i}: keep the summary short.\n" for i in range(12_000))
    assert len(filler) > 300_000
    body = {
        "model": CLAUDE.model,
        "messages": [{"role": "system", "content": filler}, MESSAGES[1]],
        **jetty_body(CLAUDE, "long-runbook", [path]),
    }
    status, _, doc = await asyncio.to_thread(
        call, runbooks.base_url + "/v1/chat/completions", runbooks.token, body
    )
    assert status == 200, doc
    meta = doc["jetty_metadata"]
    assert meta["status"] == "completed", meta["error"]
    [artifact] = [a for a in meta["artifacts"] if a["path"] == "results/summary.md"]
    status, content = await download_url(runbooks, artifact["url"])
    assert status == 200 and content.decode().strip() == expected.strip()
    # The model saw the whole runbook in its system prompt.
    system = orjson.dumps(fake.anthropic.requests[0].body.get("system")).decode()
    assert "Rule 11999: keep the summary short." in system


async def test_runs_beyond_the_runners_concurrency_wait_their_turn(
    runbooks: TestStack, fake: Fakes
) -> None:
    """Three runs at once on a runner that takes two: all complete, each in its own
    sandbox, and no more than two ever run at the same time."""
    fake.script(CLAUDE)
    data, expected = csv_for(CLAUDE)
    path = await upload_file(runbooks, data)
    body = {"model": CLAUDE.model, "messages": MESSAGES, **jetty_body(CLAUDE, "parallel", [path])}
    url = runbooks.base_url + "/v1/chat/completions"
    answers = await asyncio.gather(
        *(asyncio.to_thread(call, url, runbooks.token, body) for _ in range(3))
    )
    metas = [doc["jetty_metadata"] for status, _, doc in answers if status == 200]
    assert len(metas) == 3 and all(m["status"] == "completed" for m in metas), metas
    assert len({m["trajectory_id"] for m in metas}) == 3
    for meta in metas:
        [artifact] = [a for a in meta["artifacts"] if a["path"] == "results/summary.md"]
        status, content = await download_url(runbooks, artifact["url"])
        assert status == 200 and content.decode().strip() == expected.strip()
    spans = [
        (
            datetime.fromisoformat(m["timing"]["started_at"]),
            datetime.fromisoformat(m["timing"]["ended_at"]),
        )
        for m in metas
    ]
    for start, _ in spans:
        running = sum(1 for s, e in spans if s <= start < e)
        assert running <= 2, spans


def _claude_tools_over_chat(workspace: str) -> Callable[[Any], OpenAIScript]:
    """The read-summarise-write conversation for claude-code's tools, answered by an
    OpenAI chat-completions upstream (the gateway translates both ways)."""

    def respond(body: Any) -> OpenAIScript:
        messages = body.get("messages") or []
        names = {
            call["id"]: call["function"]["name"]
            for m in messages
            if m.get("role") == "assistant"
            for call in m.get("tool_calls") or []
        }
        results: dict[str, str] = {}
        for m in messages:
            if m.get("role") == "tool" and m.get("tool_call_id") in names:
                content = m.get("content")
                if isinstance(content, list):
                    content = "".join(str(p.get("text", "")) for p in content)
                results[names[m["tool_call_id"]]] = str(content or "")
        if "Write" in results:
            return OpenAIScript(text="Done: wrote results/summary.md.")
        if "Read" in results:
            summary = summarize_csv(file_text_from_read(results["Read"]))
            arguments = {"file_path": f"{workspace}/results/summary.md", "content": summary}
            return OpenAIScript(tool_calls=[("Write", orjson.dumps(arguments).decode())])
        arguments = {"file_path": f"{workspace}/uploads/data.csv"}
        return OpenAIScript(tool_calls=[("Read", orjson.dumps(arguments).decode())])

    return respond


async def test_an_agent_runs_on_another_providers_model(runbooks: TestStack, fake: Fakes) -> None:
    """claude-code speaks the Messages API; with an OpenAI model the gateway
    translates every call both ways, and the run is recorded the same."""
    fake.openai.respond_with("gpt-4o", _claude_tools_over_chat(WORKSPACE))
    data, expected = csv_for(CLAUDE)
    path = await upload_file(runbooks, data)
    body = {"model": "gpt-4o", "messages": MESSAGES, **jetty_body(CLAUDE, "cross", [path])}
    status, _, doc = await asyncio.to_thread(
        call, runbooks.base_url + "/v1/chat/completions", runbooks.token, body
    )
    assert status == 200, doc
    meta = doc["jetty_metadata"]
    assert meta["status"] == "completed", meta["error"]
    [artifact] = [a for a in meta["artifacts"] if a["path"] == "results/summary.md"]
    status, content = await download_url(runbooks, artifact["url"])
    assert status == 200 and content.decode().strip() == expected.strip()
    view = get_trajectory(runbooks, meta["trajectory_id"])
    completions = [s for s in view["steps"] if s["kind"] == "completion"]
    assert completions and all(s["provider"] == "openai" for s in completions)
    assert all(s["ingress"] == "anthropic.messages" for s in completions)
    assert meta["cost_usd"] is not None and meta["cost_usd"] > 0
