"""Nothing accepted is lost: the recorder killed under load, PostgreSQL stopped
for a while, NATS restarted. Real processes, real servers, real signals."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest

from jetty_cli.testing import StackFactory, TestStack

REQUESTS = 500
CONCURRENCY = 16


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        yield s


async def _chat(session: aiohttp.ClientSession, stack: TestStack, text: str) -> tuple[int, str]:
    async with session.post(
        stack.base_url + "/v1/chat/completions",
        json={"model": "mock/echo", "messages": [{"role": "user", "content": text}]},
        headers={"Authorization": f"Bearer {stack.token}"},
    ) as response:
        await response.read()
        return response.status, response.headers.get("X-Jetty-Trajectory-Id", "")


async def _load(
    session: aiohttp.ClientSession, stack: TestStack, count: int, tag: str
) -> list[str]:
    """Send ``count`` calls, CONCURRENCY at a time; every one must succeed."""
    queue = list(range(count))
    ids: list[str] = []

    async def worker() -> None:
        while queue:
            i = queue.pop()
            status, trajectory_id = await _chat(session, stack, f"{tag}-{i}")
            assert status == 200
            ids.append(trajectory_id)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return ids


async def _projected(stack: TestStack, ids: list[str], timeout: float = 60.0) -> None:
    """Wait until every id is in Postgres; then check none is there twice."""
    deadline = time.monotonic() + timeout
    conn = await asyncpg.connect(stack.database_url)
    try:
        while True:
            found = await conn.fetchval(
                "select count(*) from trajectories where trajectory_id = any($1::text[])", ids
            )
            if found == len(ids) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert found == len(ids), f"{len(ids) - found} of {len(ids)} trajectories missing"
        rows = await conn.fetch(
            "select trajectory_id, t.status, count(*) over (partition by trajectory_id) as n "
            "from steps join trajectories t using (trajectory_id) "
            "where trajectory_id = any($1::text[])",
            ids,
        )
        assert len(rows) == len(ids)  # exactly one step each
        assert {r["status"] for r in rows} == {"completed"}
        assert {r["n"] for r in rows} == {1}
    finally:
        await conn.close()


async def test_recorder_sigkilled_under_load_loses_nothing(
    stack_factory: StackFactory, session: aiohttp.ClientSession
) -> None:
    stack = stack_factory()
    load = asyncio.create_task(_load(session, stack, REQUESTS, "kill"))
    await asyncio.sleep(0.5)
    stack.kill("recorder")  # SIGKILL mid-batch
    await asyncio.sleep(0.5)
    await stack.restart_async("recorder")
    ids = await load
    assert len(set(ids)) == REQUESTS
    await _projected(stack, ids)


async def test_postgres_down_for_a_while_loses_nothing(
    stack_factory: StackFactory, session: aiohttp.ClientSession
) -> None:
    stack = stack_factory(own_postgres=True)
    await asyncio.to_thread(stack.pg.stop)
    # The hot path never waits for Postgres: calls keep succeeding.
    ids = await _load(session, stack, REQUESTS, "pgdown")
    status, _ = await _chat(session, stack, "still fine")
    assert status == 200
    async with session.get(
        f"{stack.base_url}/api/v1/trajectories/{ids[0]}",
        headers={"Authorization": f"Bearer {stack.token}"},
    ) as response:
        assert response.status == 503  # reads need Postgres: a clear 503, not a hang
        assert (await response.json())["error"]["code"] == "store_unavailable"
    await asyncio.to_thread(stack.pg.start)
    await _projected(stack, ids)


async def test_nats_restart_gives_503_then_recovers(
    stack_factory: StackFactory, session: aiohttp.ClientSession
) -> None:
    stack = stack_factory()
    status, _ = await _chat(session, stack, "before")
    assert status == 200
    await asyncio.to_thread(stack.nats.stop)
    started = time.monotonic()
    status, _ = await _chat(session, stack, "during")
    assert status == 503  # at once, not after a timeout
    assert time.monotonic() - started < 5
    async with session.post(
        stack.base_url + "/v1/chat/completions",
        json={"model": "mock/echo", "messages": [{"role": "user", "content": "x"}]},
        headers={"Authorization": f"Bearer {stack.token}"},
    ) as response:
        body = await response.json()
        assert body["error"]["type"] == "service_unavailable"
    await asyncio.to_thread(stack.nats.start)
    deadline = time.monotonic() + 30
    ids: list[str] = []
    while time.monotonic() < deadline:
        status, trajectory_id = await _chat(session, stack, "after")
        if status == 200:
            ids.append(trajectory_id)
            break
        assert status == 503
        await asyncio.sleep(0.2)
    assert ids, "the gateway did not recover after NATS came back"
    await _projected(stack, ids)
