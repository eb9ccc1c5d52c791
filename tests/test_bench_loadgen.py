"""The open-loop load generator (bench/loadgen.py) against a tiny local server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from bench.loadgen import run_open

BODY = b'{"ping": true}'


async def _serve(delay: float = 0.0, stall: tuple[int, float] | None = None) -> web.AppRunner:
    """Answers every POST after ``delay`` s; ``stall`` (request number, seconds): that
    request is held longer."""
    seen = [0]

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        if stall is not None and seen[0] == stall[0]:
            await asyncio.sleep(stall[1])
        seen[0] += 1
        if delay:
            await asyncio.sleep(delay)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/v1/x", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


def _port(runner: web.AppRunner) -> int:
    address = runner.addresses[0]
    assert isinstance(address, tuple)
    return int(address[1])


@pytest.fixture
async def fast() -> AsyncIterator[int]:
    runner = await _serve()
    yield _port(runner)
    await runner.cleanup()


async def test_open_loop_keeps_the_rate(fast: int) -> None:
    result = await run_open("127.0.0.1", fast, "/v1/x", BODY, {}, rate=500, duration=0.8)
    assert result.scheduled == 400
    assert result.errors == 0 and result.unsent == 0
    assert len(result.latencies) == 400
    assert 500 * 0.85 <= result.achieved <= 500 * 1.05, result.summary()
    # A quick local answer: the latency from the scheduled time stays small.
    assert result.pct(50) < 20, result.summary()


async def test_a_stall_shows_in_the_latency_from_the_scheduled_time() -> None:
    # One connection, 200 req/s, and the 20th answer held for 300 ms: every
    # request due meanwhile waits, and its latency counts from when it was due.
    runner = await _serve(stall=(20, 0.3))
    try:
        result = await run_open(
            "127.0.0.1", _port(runner), "/v1/x", BODY, {},
            rate=200, duration=0.6, connections=1, max_connections=1,
        )  # fmt: skip
    finally:
        await runner.cleanup()
    assert result.errors == 0 and len(result.latencies) == 120
    assert result.late >= 30, result.summary()
    assert result.pct(99) >= 200, result.summary()
    assert result.pct(95) >= 100, result.summary()
    # The time each request spent at the server alone hides the stall (one slow answer).
    assert result.pct(95, result.service) < 50, result.summary()


async def test_a_slow_server_falls_behind_the_rate() -> None:
    # 10 ms an answer on two connections can do 200 req/s; 400 are asked.
    runner = await _serve(delay=0.01)
    try:
        result = await run_open(
            "127.0.0.1", _port(runner), "/v1/x", BODY, {},
            rate=400, duration=0.3, connections=2, max_connections=2,
        )  # fmt: skip
    finally:
        await runner.cleanup()
    assert result.errors == 0 and len(result.latencies) == 120
    assert result.achieved < 300, result.summary()
    # The queue grows all run long: the last requests waited ~0.3 s.
    assert result.pct(99) > 200, result.summary()
    assert result.late > 60


async def test_the_pool_grows_to_carry_the_rate() -> None:
    # 20 ms an answer at 300 req/s needs ~6 connections at once; it starts with one.
    runner = await _serve(delay=0.02)
    try:
        result = await run_open(
            "127.0.0.1", _port(runner), "/v1/x", BODY, {},
            rate=300, duration=0.3, connections=1,
        )  # fmt: skip
    finally:
        await runner.cleanup()
    assert result.errors == 0 and len(result.latencies) == 90
    assert result.connections >= 6, result.summary()
    assert result.pct(50) < 40, result.summary()
