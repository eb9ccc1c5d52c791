"""What a call costs, end to end: the proxy prices each call from the pricing
table (``completion.*`` carries ``cost_usd`` as an exact decimal string), the
recorder stores it per step and sums it per trajectory (null if any step with
usage is unpriced), and the query API shows both.

Calls go through the real proxy worker on a real NATS server to the fake OpenAI
and Anthropic upstreams; their events are read back from JetStream and projected
into a real PostgreSQL. Expected costs are written out with the table's prices,
not computed with the code under test.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from pydantic import ValidationError

from services.proxy import pricing
from services.proxy.providers.anthropic import AnthropicConfig, AnthropicProvider
from services.proxy.providers.mock import MockProvider
from services.proxy.providers.openai_compat import (
    OpenAICompatConfig,
    OpenAICompatProvider,
    Timeouts,
)
from services.proxy.router import Router
from services.proxy.worker import Worker
from services.recorder.projection import apply
from shared import subjects
from shared.bus import ClaimStore, EventPublisher, connect, ensure_streams
from shared.chatwire import TERMINAL, ChatCall, encode_call, parse_frame
from shared.db.trajectories import get_trajectory, list_trajectories
from shared.events import Envelope, parse_data
from shared.events.completion import (
    CompletionCancelled,
    CompletionFailed,
    CompletionFinished,
    ErrorRecord,
    ResponseRecord,
    Usage,
)
from shared.ids import new_trajectory_id
from shared.openai_chat import parse_chat_request
from tests.fakes import anthropic_upstream, openai_upstream
from tests.test_projection import T0, dump, envelope, reset

OPENAI_KEY = "sk-cost-test-key-000111222"
ANTHROPIC_KEY = "sk-ant-api03-cost-test-0123456789abcdef"
END_EVENTS = frozenset({"completion.finished", "completion.failed", "completion.cancelled"})
# From services/proxy/data/pricing.toml (USD per 1M tokens), written out on purpose.
GPT_4O_MINI = {"input": Decimal("0.15"), "cached": Decimal("0.075"), "output": Decimal("0.60")}
SONNET_4_5 = {
    "input": Decimal("3.00"),
    "cached": Decimal("0.30"),
    "write": Decimal("3.75"),
    "output": Decimal("15.00"),
}
MILLION = Decimal(1_000_000)


def dollars(total_per_million: Decimal) -> str:
    """The event's text for a cost: exact, ten decimal places."""
    return f"{total_per_million / MILLION:.10f}"


# --- fakes and fixtures -------------------------------------------------------------------


class UsageUpstream(openai_upstream.FakeUpstream):
    """The fake OpenAI server, answering with a fixed usage object when one is set
    (the real API's shape: cached and reasoning tokens in the details)."""

    fixed_usage: dict[str, Any] | None = None

    def _usage(self, script: openai_upstream.Script, n: int, prompt_tokens: int) -> dict[str, Any]:
        if self.fixed_usage is not None:
            return self.fixed_usage
        return super()._usage(script, n, prompt_tokens)


@dataclass
class Bus:
    nc: NATS
    js: JetStreamContext


@pytest.fixture(scope="module")
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    nc = await connect(nats_url, name="cost-test-client")
    js = nc.jetstream()
    await ensure_streams(js)
    yield Bus(nc, js)
    await nc.drain()


@pytest.fixture(scope="module")
async def openai_fake() -> AsyncIterator[UsageUpstream]:
    upstream = UsageUpstream(api_key=OPENAI_KEY)
    await upstream.start()
    yield upstream
    await upstream.stop()


@pytest.fixture(scope="module")
async def anthropic_fake() -> AsyncIterator[anthropic_upstream.FakeAnthropic]:
    upstream = anthropic_upstream.FakeAnthropic(api_key=ANTHROPIC_KEY)
    await upstream.start()
    yield upstream
    await upstream.stop()


@pytest.fixture
async def worker(
    nats_url: str, openai_fake: UsageUpstream, anthropic_fake: anthropic_upstream.FakeAnthropic
) -> AsyncIterator[Worker]:
    openai_fake.reset()
    openai_fake.fixed_usage = None
    anthropic_fake.reset()
    timeouts = Timeouts(connect=2.0, first_byte=10.0, read=10.0)
    providers: list[Any] = [
        MockProvider(),
        OpenAICompatProvider(
            OpenAICompatConfig(base_url=openai_fake.base_url, api_key=OPENAI_KEY, timeouts=timeouts)
        ),
        AnthropicProvider(
            AnthropicConfig(
                base_url=anthropic_fake.base_url, api_key=ANTHROPIC_KEY, timeouts=timeouts
            )
        ),
    ]
    nc = await connect(nats_url, name="cost-test-proxy")
    publisher = EventPublisher(nc, nc.jetstream(), "proxy/test", claim_threshold=256 * 1024)
    running = Worker(nc, publisher, ClaimStore(nc.jetstream()), Router(providers))
    await running.start()
    yield running
    await running.stop(grace=10)
    await publisher.flush()
    await nc.drain()


@pytest.fixture
def collection() -> str:
    return f"cost-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def conn(migrated_database_url: str) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    connection = await asyncpg.connect(migrated_database_url, timeout=10, command_timeout=30)
    try:
        yield connection
    finally:
        await connection.close(timeout=10)


# --- helpers ------------------------------------------------------------------------------


async def call(bus: Bus, collection: str, body: dict[str, Any]) -> list[Envelope]:
    """Send one call as the gateway does, wait for its last frame, and return its
    events as stored in JetStream (the end event is stored before the last frame)."""
    raw = orjson.dumps(body)
    request = parse_chat_request(raw)
    chat_call = ChatCall(
        trajectory_id=new_trajectory_id(),
        collection=collection,
        task=request.task,
        received_at=time.time(),
        stream=bool(request.stream),
        include_usage=request.include_usage,
    )
    inbox = bus.nc.new_inbox()
    sub = await bus.nc.subscribe(inbox)
    try:
        await bus.nc.publish(subjects.CHAT_REQUEST, encode_call(chat_call, raw), reply=inbox)
        while True:
            kind, _ = parse_frame((await sub.next_msg(timeout=15)).data)
            if kind in TERMINAL:
                break
    finally:
        await sub.unsubscribe()
    return await stored_events(bus, chat_call)


async def stored_events(bus: Bus, chat_call: ChatCall) -> list[Envelope]:
    sub = await bus.js.subscribe(
        subjects.collection_events(chat_call.collection), ordered_consumer=True
    )
    found: list[Envelope] = []
    try:
        while True:
            msg = await sub.next_msg(timeout=5)
            event = Envelope.model_validate_json(msg.data)
            if event.trajectory_id == chat_call.trajectory_id:
                found.append(event)
            if END_EVENTS & {e.type for e in found} and msg.metadata.num_pending == 0:
                return found
    finally:
        await sub.unsubscribe()


def end_of(events: list[Envelope]) -> CompletionFinished | CompletionFailed | CompletionCancelled:
    [end] = [e for e in events if e.type in END_EVENTS]
    assert end.data is not None
    data = parse_data(end.type, end.data)
    assert isinstance(data, CompletionFinished | CompletionFailed | CompletionCancelled)
    return data


async def projected_cost(
    conn: asyncpg.Connection[asyncpg.Record], events: list[Envelope], collection: str
) -> tuple[Any, Any, str | None]:
    """Project ``events``; the API's trajectory and step cost and the stored step cost."""
    await apply(events, conn)
    trajectory_id = events[0].trajectory_id
    view = await get_trajectory(conn, collection, trajectory_id)
    assert view is not None
    stored = await conn.fetchval(
        "SELECT cost_usd::text FROM steps WHERE trajectory_id = $1", trajectory_id
    )
    body = orjson.loads(view.model_dump_json())
    return body["cost_usd"], body["steps"][0]["cost_usd"], stored


# --- through the proxy --------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_openai_cost_is_exact_in_event_and_view(
    bus: Bus,
    worker: Worker,
    openai_fake: UsageUpstream,
    collection: str,
    conn: asyncpg.Connection[asyncpg.Record],
    stream: bool,
) -> None:
    openai_fake.fixed_usage = {
        "prompt_tokens": 12_000,
        "completion_tokens": 3_000,
        "total_tokens": 15_000,
        "prompt_tokens_details": {"cached_tokens": 2_000, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 1_000, "audio_tokens": 0},
    }
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    events = await call(bus, collection, body | {"stream": stream})
    end = end_of(events)
    assert isinstance(end, CompletionFinished)
    assert end.provider == "openai" and end.usage is not None and not end.usage.estimated
    assert end.usage.details["prompt.cached_tokens"] == 2_000
    # 10,000 uncached + 2,000 cached input; 3,000 output of which 1,000 reasoning,
    # billed at the output price (gpt-4o-mini lists no reasoning price).
    g = GPT_4O_MINI
    expected = dollars(10_000 * g["input"] + 2_000 * g["cached"] + 3_000 * g["output"])
    assert expected == "0.0034500000"
    assert end.cost_usd == expected

    trajectory_cost, step_cost, stored = await projected_cost(conn, events, collection)
    assert stored == expected  # exact NUMERIC, not a float round trip
    assert step_cost == trajectory_cost == 0.00345
    page = await list_trajectories(conn, collection)
    assert [t.cost_usd for t in page.data] == [0.00345]


async def test_anthropic_cache_read_and_write_are_priced(
    bus: Bus,
    worker: Worker,
    anthropic_fake: anthropic_upstream.FakeAnthropic,
    collection: str,
    conn: asyncpg.Connection[asyncpg.Record],
) -> None:
    anthropic_fake.script(
        "claude-sonnet-4-5",
        anthropic_upstream.Script(cache_read_tokens=1_800, cache_creation_tokens=200),
    )
    body = {
        "model": "claude-sonnet-4-5",
        "messages": [{"role": "user", "content": "hello there"}],
        "stream": True,
    }
    events = await call(bus, collection, body)
    end = end_of(events)
    assert isinstance(end, CompletionFinished)
    assert end.provider == "anthropic" and end.usage is not None and not end.usage.estimated
    details = end.usage.details
    assert (details["prompt.cached_tokens"], details["prompt.cache_creation_tokens"]) == (1800, 200)
    # OpenAI semantics: prompt_tokens includes the cache reads and writes.
    uncached = end.usage.prompt_tokens - 1_800 - 200
    assert uncached > 0 and end.usage.completion_tokens > 0
    s = SONNET_4_5
    expected = dollars(
        uncached * s["input"]
        + 1_800 * s["cached"]
        + 200 * s["write"]
        + end.usage.completion_tokens * s["output"]
    )
    assert end.cost_usd == expected

    trajectory_cost, step_cost, stored = await projected_cost(conn, events, collection)
    assert stored == expected
    assert step_cost == trajectory_cost == float(expected)


@pytest.mark.parametrize(
    "model", ["openai/llama-local", "mock/echo"], ids=["unknown-model", "mock-provider"]
)
async def test_unpriced_calls_cost_null_not_zero(
    bus: Bus,
    worker: Worker,
    collection: str,
    conn: asyncpg.Connection[asyncpg.Record],
    model: str,
) -> None:
    events = await call(
        bus, collection, {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    )
    end = end_of(events)
    assert isinstance(end, CompletionFinished)
    assert end.usage is not None and end.usage.total_tokens > 0
    assert end.cost_usd is None
    trajectory_cost, step_cost, stored = await projected_cost(conn, events, collection)
    assert trajectory_cost is None and step_cost is None and stored is None


async def test_failed_call_with_partial_usage_is_priced(
    bus: Bus,
    worker: Worker,
    openai_fake: UsageUpstream,
    collection: str,
) -> None:
    """A stream cut mid-way has no upstream usage: the estimate is priced, and the
    usage says it is an estimate."""
    openai_fake.script(
        "gpt-4o-mini", openai_upstream.Script(text="one two three four", cut_after=2)
    )
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    end = end_of(await call(bus, collection, body))
    assert isinstance(end, CompletionFailed)
    assert end.usage is not None and end.usage.estimated
    g = GPT_4O_MINI
    expected = dollars(
        end.usage.prompt_tokens * g["input"] + end.usage.completion_tokens * g["output"]
    )
    assert end.cost_usd == expected and Decimal(expected) > 0


async def test_failed_call_without_usage_costs_null(
    bus: Bus, worker: Worker, openai_fake: UsageUpstream, collection: str
) -> None:
    openai_fake.script("gpt-4o-mini", openai_upstream.PRESETS["fake-429"])
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    end = end_of(await call(bus, collection, body))
    assert isinstance(end, CompletionFailed)
    assert end.usage is None and end.cost_usd is None


# --- the trajectory's cost, in the projection --------------------------------------------


def step(
    trajectory_id: str,
    index: int,
    cost: str | None,
    *,
    usage: bool = True,
    status: str = "finished",
) -> Envelope:
    fields: dict[str, Any] = {
        "task": "_chat",
        "step_index": index,
        "model": "gpt-4o-mini",
        "provider": "openai",
        "response": ResponseRecord(content=f"step {index}", finish_reason="stop"),
        "usage": Usage(prompt_tokens=10, completion_tokens=5, total_tokens=15) if usage else None,
        "cost_usd": cost,
        "latency_ms": 2.0,
        "received_at": T0 + timedelta(seconds=index),
        "ended_at": T0 + timedelta(seconds=index, milliseconds=2),
        "request": {"model": "gpt-4o-mini", "messages": []},
        "stream": False,
        "ingress": "chat.completions",
    }
    if status == "failed":
        error = ErrorRecord(status=429, type="rate_limit", message="slow down")
        data: Any = CompletionFailed(**fields, error=error)
    elif status == "cancelled":
        data = CompletionCancelled(**fields)
    else:
        data = CompletionFinished(**fields)
    return envelope(data, trajectory_id, event_id=f"{trajectory_id}-{index}-{status}")


async def trajectory_cost(conn: asyncpg.Connection[asyncpg.Record], trajectory_id: str) -> Any:
    return await conn.fetchval(
        "SELECT cost_usd FROM trajectories WHERE trajectory_id = $1", trajectory_id
    )


async def test_trajectory_cost_is_the_exact_sum_with_the_null_rule(
    conn: asyncpg.Connection[asyncpg.Record],
) -> None:
    costs = ["0.0000000001", "0.0034500000", "7.25"]
    await apply([step("tr_sum", i, c) for i, c in enumerate(costs)], conn)
    expected = pricing.sum_costs(Decimal(c) for c in costs)
    assert await trajectory_cost(conn, "tr_sum") == expected == Decimal("7.2534500001")
    view = await get_trajectory(conn, "acme", "tr_sum")
    assert view is not None and view.cost_usd == 7.2534500001
    assert [s.cost_usd for s in view.steps] == [1e-10, 0.00345, 7.25]

    # A failed step without usage spent nothing: it does not make the sum unknown.
    await apply([step("tr_sum", 3, None, usage=False, status="failed")], conn)
    assert await trajectory_cost(conn, "tr_sum") == expected
    # A step with usage but no price does: the total would be an under-count.
    await apply([step("tr_sum", 4, None, status="cancelled")], conn)
    assert await trajectory_cost(conn, "tr_sum") is None
    assert pricing.sum_costs([*map(Decimal, costs), None]) is None
    view = await get_trajectory(conn, "acme", "tr_sum")
    assert view is not None and view.cost_usd is None

    # No step with usage yet: unknown, like the token counts.
    await apply([step("tr_none", 0, None, usage=False, status="failed")], conn)
    assert await trajectory_cost(conn, "tr_none") is None


async def test_costs_replay_to_identical_tables(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """Stored with a fixed scale whatever text the event carried, so live batches
    and a one-batch replay in another order give byte-identical rows."""
    events = [
        step("tr_a", 0, "7.25"),
        step("tr_a", 1, "0.0034500000"),
        step("tr_b", 0, None),
        step("tr_b", 1, "1.5"),
        step("tr_c", 0, "0"),
        step("tr_c", 1, None, usage=False, status="failed"),
    ]
    for event in events:
        await apply([event], conn)
    live = await dump(conn)
    assert '"cost_usd": 7.2534500000' in live["trajectories"][0]
    assert await apply(events, conn) == 0
    assert await dump(conn) == live
    await reset(conn)
    await apply(list(reversed(events)), conn)
    assert await dump(conn) == live
    assert await trajectory_cost(conn, "tr_b") is None
    assert await trajectory_cost(conn, "tr_c") == Decimal("0")


# --- the event field and the usage mapping ------------------------------------------------


@pytest.mark.parametrize("bad", ["1.5E-9", "-1", "0.00000000001", "1e3", "", "NaN", "1,5"])
def test_cost_field_is_plain_decimal_text(bad: str) -> None:
    fields = {
        "task": "t",
        "model": "m",
        "provider": "p",
        "response": ResponseRecord(),
        "latency_ms": 1.0,
        "received_at": T0,
        "ended_at": T0,
    }
    assert CompletionFinished(**fields, cost_usd="0.0000000015").cost_usd == "0.0000000015"
    with pytest.raises(ValidationError):
        CompletionFinished(**fields, cost_usd=bad)


def test_cost_text_never_uses_exponent_notation() -> None:
    assert pricing.cost_text(Decimal("1.5E-9").quantize(pricing.COST_QUANTUM)) == "0.0000000015"
    assert pricing.cost_text(Decimal(0).quantize(pricing.COST_QUANTUM)) == "0.0000000000"
    assert pricing.cost_text(None) is None


def test_usage_counts_from_recorded_details() -> None:
    counts = pricing.usage_counts(
        2_000,
        300,
        {
            "prompt.cached_tokens": 1_000,
            "prompt.cache_creation_tokens": 500,
            "prompt.cache_creation_1h_tokens": 100,
            "prompt.audio_tokens": 0,
            "completion.reasoning_tokens": 200,
        },
    )
    assert counts == pricing.UsageCounts(
        prompt_tokens=2_000,
        completion_tokens=300,
        cached_tokens=1_000,
        cache_write_tokens=500,
        cache_write_1h_tokens=100,
        reasoning_tokens=200,
    )
    # Cohere: the billed units are what is charged.
    billed = {"prompt.billed_tokens": 40, "completion.billed_tokens": 9, "prompt.cached_tokens": 5}
    assert pricing.usage_counts(50, 10, billed) == pricing.UsageCounts(40, 9)
    with pytest.raises(ValueError, match="exceed"):
        pricing.usage_counts(10, 0, {"prompt.cached_tokens": 11})
