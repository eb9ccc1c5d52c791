"""Several worker processes (JETTY_GATEWAY_WORKERS, JETTY_PROXY_WORKERS): real
processes sharing the gateway's port with SO_REUSEPORT and the proxies' queue
group; each gateway worker with its own NATS connection and reply inbox."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from jetty_cli.stack import StackError, worker_count
from jetty_cli.testing import StackFactory, TestStack

BODY = {"model": "mock/echo", "messages": [{"role": "user", "content": "which worker?"}]}


@pytest.fixture(scope="module")
def workers_stack(stack_factory: StackFactory) -> TestStack:
    return stack_factory(env={"JETTY_GATEWAY_WORKERS": "2", "JETTY_PROXY_WORKERS": "2"})


def _published(stack: TestStack) -> dict[str, int]:
    """Messages each gateway worker's NATS connection has sent (one per call and more)."""
    conns = stack._nats_connections() or []
    out = {}
    for process in stack.workers("gateway"):
        suffix = f"-{process.pid}"
        out[process.name] = sum(
            int(c.get("out_msgs", 0)) for c in conns if str(c.get("name", "")).endswith(suffix)
        )
    return out


async def test_two_gateway_workers_both_serve(workers_stack: TestStack) -> None:
    stack = workers_stack
    assert [p.name for p in stack.workers("gateway")] == ["gateway", "gateway-2"]
    assert [p.name for p in stack.workers("proxy")] == ["proxy", "proxy-2"]
    assert all(p.alive for p in stack)
    before = _published(stack)
    headers = {"Authorization": f"Bearer {stack.token}"}

    async def one() -> str:
        # A new connection per call: the kernel picks the listening worker per connection.
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as client,
            client.post(stack.base_url + "/v1/chat/completions", json=BODY, headers=headers) as r,
        ):
            assert r.status == 200, await r.text()
            return r.headers["X-Jetty-Trajectory-Id"]

    ids = await asyncio.gather(*(one() for _ in range(40)))
    assert len(set(ids)) == 40
    after = _published(stack)
    served = {name: after[name] - before.get(name, 0) for name in after}
    assert all(n > 0 for n in served.values()), served

    # One worker gone: the other keeps the port and serves alone.
    stack.kill("gateway-2")
    try:
        assert await one()
    finally:
        stack.start_service("gateway-2")
        await stack.wait_ready_async(60, ("gateway-2",))


async def test_a_streamed_call_through_either_worker(workers_stack: TestStack) -> None:
    headers = {"Authorization": f"Bearer {workers_stack.token}"}
    url = workers_stack.base_url + "/v1/chat/completions"
    for _ in range(4):
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as client,
            client.post(url, json={**BODY, "stream": True}, headers=headers) as r,
        ):
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/event-stream")
            text = await r.text()
        assert '"chat.completion.chunk"' in text
        assert text.rstrip().endswith("data: [DONE]")


def test_worker_count_setting() -> None:
    assert worker_count({}, "gateway") == 1
    assert worker_count({"JETTY_GATEWAY_WORKERS": "3"}, "gateway") == 3
    assert worker_count({"JETTY_GATEWAY_WORKERS": "0"}, "gateway") == 1
    assert worker_count({"JETTY_GATEWAY_WORKERS": "3"}, "recorder") == 1
    with pytest.raises(StackError, match="whole number"):
        worker_count({"JETTY_PROXY_WORKERS": "two"}, "proxy")
