"""Retries and fallbacks, through the proxy worker on a real NATS server against
fake OpenAI-compatible upstreams (tests/fakes/openai_upstream.py) configured as
catalogue providers (``vllm``, ``ollama``) exactly as an operator would.

Pauses go through an injected ``sleep`` that records them instead of waiting, so
"the Retry-After was honoured" is asserted on the value, not on a clock; the same
hook re-scripts the fake between tries ("429 now, fine on the retry")."""

from __future__ import annotations

import random
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from jetty_cli.testing import StackFactory
from services.proxy.providers import build_providers
from services.proxy.retry import RetryPolicy
from services.proxy.router import Router
from services.proxy.routes import parse_routes
from services.proxy.settings import ProxySettings
from services.proxy.worker import Worker
from shared.bus import ClaimStore, EventPublisher, connect, ensure_streams
from shared.chatwire import Frame
from shared.errors import ApiError, RateLimited, UpstreamError, UpstreamTimeout
from tests.fakes.openai_upstream import FakeUpstream, Script
from tests.test_proxy import Bus, chat, error_of, events, make_call, roundtrip

KEY = "sk-retry-test-key-0001"


@pytest.fixture(scope="module")
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    nc = await connect(nats_url, name="retry-test-client")
    js = nc.jetstream()
    await ensure_streams(js)
    yield Bus(nc, js)
    await nc.drain()


@pytest.fixture(scope="module")
async def upstreams() -> AsyncIterator[tuple[FakeUpstream, FakeUpstream]]:
    primary, secondary = FakeUpstream(api_key=KEY), FakeUpstream(api_key=None)
    await primary.start()
    await secondary.start()
    yield primary, secondary
    await primary.stop()
    await secondary.stop()


@pytest.fixture
def collection() -> str:
    return f"retry-test-{uuid.uuid4().hex[:10]}"


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


ROUTES = {
    "aliases": {
        "chain": ["vllm/primary-model", "ollama/secondary-model"],
        "dead-first": ["sglang/anything", "ollama/secondary-model"],
    }
}

Sleep = Callable[[float], Awaitable[None]]
StartWorker = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def start_worker(
    nats_url: str, upstreams: tuple[FakeUpstream, FakeUpstream]
) -> AsyncIterator[StartWorker]:
    primary, secondary = upstreams
    primary.reset()
    secondary.reset()
    started: list[tuple[Worker, EventPublisher, Any]] = []
    env = {
        "VLLM_BASE_URL": primary.base_url,
        "VLLM_API_KEY": KEY,
        "OLLAMA_BASE_URL": secondary.base_url,
        "SGLANG_BASE_URL": closed_port_url(),  # nobody listens: connection refused
    }

    async def start(sleep: Sleep | None = None, max_retries: int = 2, **options: Any) -> Worker:
        settings = ProxySettings(upstream_first_byte_timeout=5.0, upstream_read_timeout=5.0)
        router = Router(
            build_providers(settings, env), aliases=parse_routes(ROUTES), rng=random.Random(7)
        )

        async def no_wait(delay: float) -> None:
            pass

        policy = RetryPolicy(
            max_retries=max_retries,
            max_delay=10.0,
            rng=random.Random(3),
            sleep=sleep or no_wait,
        )
        nc = await connect(nats_url, name="proxy-under-retry-test")
        js = nc.jetstream()
        publisher = EventPublisher(nc, js, "proxy/test", claim_threshold=256 * 1024)
        options.setdefault("keepalive_interval", 0.2)
        worker = Worker(nc, publisher, ClaimStore(js), router, retry=policy, **options)
        await worker.start()
        started.append((worker, publisher, nc))
        return worker

    yield start
    for worker, publisher, nc in started:
        await worker.stop(grace=10)
        await publisher.flush()
        await nc.drain()


# --- the policy on its own ---------------------------------------------------------------


def test_policy_classification() -> None:
    policy = RetryPolicy(max_retries=2, base_delay=0.5, max_delay=5.0, rng=random.Random(1))
    assert policy.delay(0, RateLimited("slow down", retry_after=3)) == 3
    assert policy.delay(0, RateLimited("slow down", retry_after=60)) is None  # falls back
    assert policy.falls_back(RateLimited("slow down", retry_after=60))
    backoff = [policy.delay(n, UpstreamError("boom")) for n in range(2)]
    assert all(d is not None and 0 <= d <= 0.5 * 2**n for n, d in enumerate(backoff))
    assert policy.delay(2, UpstreamError("boom")) is None  # retries used up
    auth = UpstreamError("bad key", code="upstream_auth_failed")
    assert policy.delay(0, auth) is None and policy.falls_back(auth)
    timeout = UpstreamTimeout("slow", code="upstream_timeout")
    assert policy.delay(0, timeout) is None and policy.falls_back(timeout)
    bad = ApiError("bad temperature", status=400, error_type="invalid_request_error")
    assert policy.delay(0, bad) is None and not policy.falls_back(bad)
    assert not policy.falls_back(
        ApiError("no such model", status=404, error_type="invalid_request_error")
    )


def test_full_jitter_stays_under_the_cap() -> None:
    policy = RetryPolicy(max_retries=10, base_delay=1.0, max_delay=4.0, rng=random.Random(5))
    delays = [policy.delay(n, UpstreamError("boom")) for n in range(8) for _ in range(50)]
    assert all(d is not None and 0 <= d <= 4.0 for d in delays)
    assert max(d for d in delays if d is not None) > 3.0  # the cap, not the base, bounds late tries


# --- through the worker ------------------------------------------------------------------


async def test_429_with_retry_after_then_success(
    bus: Bus,
    start_worker: StartWorker,
    upstreams: tuple[FakeUpstream, FakeUpstream],
    collection: str,
) -> None:
    primary, _ = upstreams
    primary.script("flaky", Script(status=429, retry_after="2", error_code="rate_limit_exceeded"))
    waits: list[float] = []

    async def sleep(delay: float) -> None:
        waits.append(delay)
        primary.script("flaky", Script(text="made it"))  # the upstream recovers meanwhile

    await start_worker(sleep=sleep)
    call, raw = make_call(collection, chat("vllm/flaky"))
    reply = await roundtrip(bus.nc, call, raw)
    assert [k for k, _ in reply] == [Frame.RESPONSE]
    assert orjson.loads(reply[0][1])["choices"][0]["message"]["content"] == "made it"
    assert waits == [2.0]  # exactly the upstream's Retry-After, once
    assert len(primary.requests) == 2
    finished = (await events(bus, call))["completion.finished"]
    assert [(a.provider, a.model, a.status, a.error, a.retry_after) for a in finished.attempts] == [
        ("vllm", "flaky", 429, "rate_limit_exceeded", 2.0),
        ("vllm", "flaky", 200, None, None),
    ]
    assert finished.provider == "vllm"


async def test_retry_after_beyond_the_cap_is_not_waited_for(
    bus: Bus,
    start_worker: StartWorker,
    upstreams: tuple[FakeUpstream, FakeUpstream],
    collection: str,
) -> None:
    primary, _ = upstreams
    primary.script("busy", Script(status=429, retry_after="3600"))
    waits: list[float] = []

    async def sleep(delay: float) -> None:
        waits.append(delay)

    await start_worker(sleep=sleep)
    call, raw = make_call(collection, chat("vllm/busy"))
    error = error_of(await roundtrip(bus.nc, call, raw))
    assert error["status"] == 429 and error["retry_after"] == 3600  # the client decides
    assert waits == [] and len(primary.requests) == 1


async def test_5xx_retried_then_fallback_to_second_target(
    bus: Bus,
    start_worker: StartWorker,
    upstreams: tuple[FakeUpstream, FakeUpstream],
    collection: str,
) -> None:
    primary, secondary = upstreams
    primary.script("primary-model", Script(status=500))
    secondary.script("secondary-model", Script(text="from the fallback"))
    waits: list[float] = []

    async def sleep(delay: float) -> None:
        waits.append(delay)

    await start_worker(sleep=sleep, max_retries=2)
    for stream in (False, True):
        primary.requests.clear()
        call, raw = make_call(collection, chat("chain", stream=stream))
        reply = await roundtrip(bus.nc, call, raw)
        assert reply[-1][0] in {Frame.RESPONSE, Frame.DONE}
        assert len(primary.requests) == 3  # first try + 2 retries
        finished = (await events(bus, call))["completion.finished"]
        assert finished.response.content == "from the fallback"
        assert (finished.provider, finished.model) == ("ollama", "chain")
        assert [(a.provider, a.status) for a in finished.attempts] == [
            ("vllm", 502),
            ("vllm", 502),
            ("vllm", 502),
            ("ollama", 200),
        ]
    assert len(waits) == 4 and all(0 <= w <= 1.0 for w in waits)  # jittered, bounded


async def test_connection_error_falls_back(
    bus: Bus, start_worker: StartWorker, collection: str
) -> None:
    await start_worker(max_retries=1)
    call, raw = make_call(collection, chat("dead-first"))
    reply = await roundtrip(bus.nc, call, raw)
    assert reply[-1][0] is Frame.RESPONSE
    finished = (await events(bus, call))["completion.finished"]
    assert [(a.provider, a.status, a.error) for a in finished.attempts] == [
        ("sglang", None, "upstream_unreachable"),
        ("sglang", None, "upstream_unreachable"),
        ("ollama", 200, None),
    ]


async def test_client_errors_are_not_retried_nor_fallen_back(
    bus: Bus,
    start_worker: StartWorker,
    upstreams: tuple[FakeUpstream, FakeUpstream],
    collection: str,
) -> None:
    primary, secondary = upstreams
    primary.script("primary-model", Script(status=400, error_type="invalid_request_error"))
    await start_worker()
    call, raw = make_call(collection, chat("chain"))
    error = error_of(await roundtrip(bus.nc, call, raw))
    assert error["status"] == 400
    assert len(primary.requests) == 1 and len(secondary.requests) == 0
    failed = (await events(bus, call))["completion.failed"]
    assert [(a.provider, a.status) for a in failed.attempts] == [("vllm", 400)]


async def test_no_retry_once_a_chunk_was_sent(
    bus: Bus,
    start_worker: StartWorker,
    upstreams: tuple[FakeUpstream, FakeUpstream],
    collection: str,
) -> None:
    primary, secondary = upstreams
    primary.script("primary-model", Script(text="one two three four", error_after=2))
    await start_worker()
    call, raw = make_call(collection, chat("chain", stream=True))
    reply = await roundtrip(bus.nc, call, raw)
    assert any(k is Frame.CHUNK for k, _ in reply)
    assert error_of(reply)["status"] == 502
    assert len(primary.requests) == 1 and len(secondary.requests) == 0
    failed = (await events(bus, call))["completion.failed"]
    assert len(failed.attempts) == 1 and failed.response.content == "one"


async def test_retries_never_outlast_the_total_timeout(
    bus: Bus,
    start_worker: StartWorker,
    upstreams: tuple[FakeUpstream, FakeUpstream],
    collection: str,
) -> None:
    primary, _ = upstreams
    primary.script("later", Script(status=429, retry_after="5"))
    waits: list[float] = []

    async def sleep(delay: float) -> None:
        waits.append(delay)

    await start_worker(sleep=sleep, total_timeout=2.0)
    call, raw = make_call(collection, chat("vllm/later"))
    error = error_of(await roundtrip(bus.nc, call, raw))
    assert error["status"] == 429
    assert waits == []  # a 5 s wait would have crossed the 2 s limit


# --- recorded in the trajectory -----------------------------------------------------------


async def test_attempts_reach_the_trajectory(
    stack_factory: StackFactory,
    upstreams: tuple[FakeUpstream, FakeUpstream],
    tmp_path: Path,
) -> None:
    primary, secondary = upstreams
    primary.reset()
    secondary.reset()
    primary.script("primary-model", Script(status=503))
    routes = tmp_path / "routes.toml"
    routes.write_text('[aliases]\nchain = ["vllm/primary-model", "ollama/secondary-model"]\n')
    stack = stack_factory(
        env={
            "VLLM_BASE_URL": primary.base_url,
            "VLLM_API_KEY": KEY,
            "OLLAMA_BASE_URL": secondary.base_url,
            "JETTY_ROUTES_FILE": str(routes),
            "JETTY_RETRY_MAX_ATTEMPTS": "1",
            "JETTY_RETRY_BASE_DELAY": "0.01",
        }
    )
    async with openai.AsyncOpenAI(
        base_url=stack.base_url + "/v1", api_key=stack.token, max_retries=0
    ) as client:
        completion = await client.chat.completions.create(
            model="chain", messages=[{"role": "user", "content": "hi"}]
        )
    trajectory_id = (completion.model_extra or {})["jetty_metadata"]["trajectory_id"]
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{stack.base_url}/api/v1/trajectories/{trajectory_id}",
            headers={"Authorization": f"Bearer {stack.token}"},
        ) as response,
    ):
        trajectory = await response.json()
    (step,) = trajectory["steps"]
    assert step["provider"] == "ollama"
    assert [(a["provider"], a["model"], a["status"]) for a in step["attempts"]] == [
        ("vllm", "primary-model", 502),
        ("vllm", "primary-model", 502),
        ("ollama", "secondary-model", 200),
    ]
