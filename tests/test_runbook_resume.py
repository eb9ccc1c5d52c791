"""Resumable runbook progress: every SSE chunk has an id, and
``GET /api/v1/trajectories/{id}/events`` with ``Last-Event-ID`` gives what came
after it, then the live rest; without the header, the whole stream again."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from jetty_cli.testing import TestStack
from tests.openapi import validate
from tests.runbook_support import (  # the stack and fakes of the runbook tests
    AGENTS,
    MESSAGES,
    Fakes,
    csv_for,
    fake,
    fakes,
    jetty_body,
    runbooks,
    upload_file,
)

pytestmark = pytest.mark.timeout(300)
__all__ = ["fake", "fakes", "runbooks"]

CLAUDE = AGENTS[0]
Chunk = tuple[str | None, dict[str, Any] | None]  # (id, data); data None for [DONE]


async def _read_sse(response: aiohttp.ClientResponse, stop_after: int | None = None) -> list[Chunk]:
    """The stream's events as (id, data); stops after ``stop_after`` events with an id
    other than ``open`` (the client "loses" the connection there)."""
    chunks: list[Chunk] = []
    event_id: str | None = None
    seen = 0
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("data: "):
            payload = line[6:]
            data = None if payload == "[DONE]" else orjson.loads(payload)
            if data is not None:
                validate("CreateChatCompletionStreamResponse", data)
            chunks.append((event_id, data))
            if event_id not in (None, "open"):
                seen += 1
            event_id = None
            if data is None or (stop_after is not None and seen >= stop_after):
                break
    return chunks


async def test_a_lost_progress_stream_is_resumed_from_its_last_event_id(
    runbooks: TestStack, fake: Fakes
) -> None:
    data, _ = csv_for(CLAUDE)
    path = await upload_file(runbooks, data)
    fake.script(CLAUDE)
    headers = {"Authorization": f"Bearer {runbooks.token}"}
    body = {"model": CLAUDE.model, "messages": MESSAGES, "stream": True}
    body |= jetty_body(CLAUDE, "resume", [path])
    async with aiohttp.ClientSession() as session:
        async with session.post(
            runbooks.base_url + "/v1/chat/completions", json=body, headers=headers
        ) as response:
            assert response.status == 200
            before = await _read_sse(response, stop_after=2)
        opening = before[0][1]
        assert before[0][0] == "open" and opening is not None
        trajectory_id = opening["jetty_metadata"]["trajectory_id"]
        last_id = before[-1][0]
        assert last_id is not None and last_id != "open"
        follow = runbooks.base_url + f"/api/v1/trajectories/{trajectory_id}/events"

        async with session.get(follow, headers=headers | {"Last-Event-ID": last_id}) as response:
            assert response.status == 200
            after = await _read_sse(response)
        async with session.get(follow, headers=headers) as response:
            assert response.status == 200
            whole = await _read_sse(response)

        # The whole stream again: opening chunk first, then events, the end, [DONE].
        ids = [chunk_id for chunk_id, _ in whole]
        assert ids[0] == "open" and ids[-2:] == ["end", None]
        assert len(set(ids)) == len(ids)
        # What the first connection saw is the start of it, and the resumed
        # connection is exactly the rest.
        assert [c for c, _ in before] == ids[: len(before)]
        assert [c for c, _ in after] == ids[len(before) :]
        final = after[-2][1]
        assert final is not None and final["jetty_metadata"]["status"] == "completed"
        assert final["choices"][0]["finish_reason"] == "stop"

        # Having had everything, a client gets just the end of the stream.
        async with session.get(follow, headers=headers | {"Last-Event-ID": "end"}) as response:
            assert await _read_sse(response) == [(None, None)]


async def test_following_needs_a_known_run_and_event_id(runbooks: TestStack, fake: Fakes) -> None:
    headers = {"Authorization": f"Bearer {runbooks.token}"}
    async with aiohttp.ClientSession() as session:
        unknown = runbooks.base_url + "/api/v1/trajectories/tr_00000000000000000000000000/events"
        async with session.get(unknown, headers=headers) as response:
            assert response.status == 404
            assert (await response.json())["error"]["code"] == "not_found"

        data, _ = csv_for(CLAUDE)
        path = await upload_file(runbooks, data)
        fake.script(CLAUDE)
        body = {"model": CLAUDE.model, "messages": MESSAGES, "stream": True}
        body |= jetty_body(CLAUDE, "resume-bad-id", [path])
        async with session.post(
            runbooks.base_url + "/v1/chat/completions", json=body, headers=headers
        ) as response:
            whole = await _read_sse(response)
        opening = whole[0][1]
        assert opening is not None
        follow = (
            runbooks.base_url
            + f"/api/v1/trajectories/{opening['jetty_metadata']['trajectory_id']}/events"
        )
        async with session.get(
            follow, headers=headers | {"Last-Event-ID": "evt_not_of_this_run"}
        ) as response:
            assert response.status == 400
            error = (await response.json())["error"]
            assert error["code"] == "invalid_last_event_id" and error["param"] == "Last-Event-ID"
