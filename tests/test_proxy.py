"""The proxy worker on a real NATS server (JetStream for events): calls go in as
``ChatCall`` messages exactly as the gateway sends them, frames come back on a
reply inbox, and the completion events are read back from the JETTY_EVENTS stream.
Upstreams are the built-in mock and the fake OpenAI server."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from jsonschema import ValidationError
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import ObjectNotFoundError

from services.proxy.providers.mock import MockProvider
from services.proxy.providers.openai_compat import (
    OpenAICompatConfig,
    OpenAICompatProvider,
    Timeouts,
)
from services.proxy.router import Router
from services.proxy.worker import Worker
from shared import subjects
from shared.bus import ClaimStore, EventPublisher, connect, ensure_streams
from shared.chatwire import TERMINAL, ChatCall, Frame, encode_call, parse_frame
from shared.events import Envelope, parse_data
from shared.events.completion import (
    CompletionCancelled,
    CompletionFailed,
    CompletionFinished,
    CompletionRequested,
)
from shared.ids import new_trajectory_id
from shared.openai_chat import parse_chat_request
from tests.fakes.openai_upstream import FakeUpstream, Script
from tests.openapi import validate

KEY = "sk-proxy-test-key-000111222"


def test_schema_check_is_strict() -> None:
    chunk = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    validate("CreateChatCompletionStreamResponse", {**chunk, "choices": [], "jetty_metadata": {}})
    with pytest.raises(ValidationError, match=r"'chat\.completion' is not one of"):
        validate("CreateChatCompletionStreamResponse", {**chunk, "object": "chat.completion"})
    with pytest.raises(ValidationError, match="finish_reason"):
        validate(
            "CreateChatCompletionStreamResponse", {**chunk, "choices": [{"index": 0, "delta": {}}]}
        )


# --- fixtures ----------------------------------------------------------------------------


@dataclass
class Bus:
    nc: NATS
    js: JetStreamContext


@pytest.fixture(scope="module")
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    nc = await connect(nats_url, name="proxy-test-client")
    js = nc.jetstream()
    await ensure_streams(js)
    yield Bus(nc, js)
    await nc.drain()


@pytest.fixture(scope="module")
async def fake() -> AsyncIterator[FakeUpstream]:
    upstream = FakeUpstream(api_key=KEY)
    await upstream.start()
    yield upstream
    await upstream.stop()


@pytest.fixture
def collection() -> str:
    return f"proxy-test-{uuid.uuid4().hex[:10]}"


StartWorker = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def start_worker(nats_url: str, fake: FakeUpstream) -> AsyncIterator[StartWorker]:
    fake.reset()
    started: list[tuple[Worker, EventPublisher, NATS]] = []

    async def start(openai: bool = True, **options: Any) -> Worker:
        nc = await connect(nats_url, name="proxy-under-test")
        js = nc.jetstream()
        providers: list[Any] = [MockProvider()]
        if openai:
            config = OpenAICompatConfig(
                base_url=fake.base_url,
                api_key=KEY,
                models=("gpt-4o", "llama-local"),
                timeouts=Timeouts(connect=2.0, first_byte=10.0, read=10.0),
            )
            providers.append(OpenAICompatProvider(config))
        publisher = EventPublisher(nc, js, "proxy/test", claim_threshold=256 * 1024)
        options.setdefault("keepalive_interval", 0.2)
        worker = Worker(nc, publisher, ClaimStore(js), Router(providers), **options)
        await worker.start()
        started.append((worker, publisher, nc))
        return worker

    yield start
    for worker, publisher, nc in started:
        await worker.stop(grace=10)
        await publisher.flush()
        await nc.drain()


# --- helpers -----------------------------------------------------------------------------


def make_call(collection: str, body: dict[str, Any], **fields: Any) -> tuple[ChatCall, bytes]:
    raw = orjson.dumps(body)
    request = parse_chat_request(raw)
    call = ChatCall(
        trajectory_id=new_trajectory_id(),
        collection=collection,
        task=request.task,
        received_at=time.time(),
        stream=bool(request.stream),
        include_usage=request.include_usage,
        **fields,
    )
    return call, raw


def chat(model: str, text: str = "hello proxy", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


async def frames(nc: NATS, call: ChatCall, body: bytes) -> AsyncIterator[tuple[Frame, bytes]]:
    """Send a call as the gateway does and yield its frames up to the terminal one."""
    inbox = nc.new_inbox()
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_frame(msg: Msg) -> None:
        queue.put_nowait(msg.data)

    sub = await nc.subscribe(inbox, cb=on_frame)
    try:
        await nc.publish(subjects.CHAT_REQUEST, encode_call(call, body), reply=inbox)
        while True:
            kind, payload = parse_frame(await asyncio.wait_for(queue.get(), 15))
            yield kind, payload
            if kind in TERMINAL:
                return
    finally:
        await sub.unsubscribe()


async def roundtrip(nc: NATS, call: ChatCall, body: bytes) -> list[tuple[Frame, bytes]]:
    return [f async for f in frames(nc, call, body)]


def error_of(reply: list[tuple[Frame, bytes]]) -> dict[str, Any]:
    kind, payload = reply[-1]
    assert kind is Frame.ERROR
    document: dict[str, Any] = orjson.loads(payload)
    return document


END_EVENTS = frozenset({"completion.finished", "completion.failed", "completion.cancelled"})


async def events(bus: Bus, call: ChatCall) -> dict[str, Any]:
    """The call's completion events, read back from the JetStream stream: all the
    events of the test's collection, up to the stream's end once the call's terminal
    event is there (a requested event is published before it or never)."""
    sub = await bus.js.subscribe(subjects.collection_events(call.collection), ordered_consumer=True)
    found: dict[str, Any] = {}
    try:
        while True:
            msg = await sub.next_msg(timeout=5)
            envelope = Envelope.model_validate_json(msg.data)
            if envelope.trajectory_id == call.trajectory_id:
                assert envelope.type not in found, f"{envelope.type} published twice"
                assert envelope.data is not None
                found[envelope.type] = parse_data(envelope.type, envelope.data)
            if END_EVENTS & found.keys() and msg.metadata.num_pending == 0:
                return found
    finally:
        await sub.unsubscribe()


def quick(found: dict[str, Any]) -> CompletionFinished | CompletionFailed | CompletionCancelled:
    """A call that ended before the requested delay: exactly one event, its end,
    which carries the request side."""
    [(kind, end)] = found.items()
    assert kind in END_EVENTS
    assert end.request is not None and end.stream is not None
    assert end.ingress == "chat.completions"
    assert isinstance(end, CompletionFinished | CompletionFailed | CompletionCancelled)
    return end


def slow(found: dict[str, Any]) -> tuple[CompletionRequested, Any]:
    """A call that outlasted the delay: requested, then its end without the request."""
    assert len(found) == 2
    requested = found.pop("completion.requested")
    [end] = found.values()
    assert isinstance(requested, CompletionRequested)
    assert (end.request, end.stream, end.ingress) == (None, None, None)
    return requested, end


async def stored_already(bus: Bus, call: ChatCall, event_type: str) -> None:
    """The terminal event must be in the stream by the time the last frame arrives."""
    msg = await bus.js.get_last_msg(
        subjects.EVENTS_STREAM, subjects.event_subject(call.collection, event_type)
    )
    assert msg.data is not None
    assert Envelope.model_validate_json(msg.data).trajectory_id == call.trajectory_id


def metadata(call: ChatCall) -> dict[str, str]:
    return {
        "trajectory_id": call.trajectory_id,
        "collection": call.collection,
        "mode": "passthrough",
        "task": call.task,
    }


# --- the mock provider end to end --------------------------------------------------------


async def test_non_stream(bus: Bus, start_worker: StartWorker, collection: str) -> None:
    await start_worker()
    body = chat("mock/echo", "Hello there", temperature=0.2, jetty={"task": "greeter"})
    call, raw = make_call(collection, body)
    reply = await roundtrip(bus.nc, call, raw)
    assert [k for k, _ in reply] == [Frame.RESPONSE]
    await stored_already(bus, call, "completion.finished")
    document = orjson.loads(reply[0][1])
    validate("CreateChatCompletionResponse", document)
    assert document["jetty_metadata"] == metadata(call)
    assert document["jetty_metadata"]["task"] == "greeter"
    assert document["choices"][0]["message"]["content"] == "You said: Hello there"

    # A quick call is one event: the end, carrying what completion.requested would.
    finished = quick(await events(bus, call))
    assert isinstance(finished, CompletionFinished)
    assert (finished.provider, finished.model, finished.stream) == ("mock", "mock/echo", False)
    assert finished.task == "greeter"
    assert finished.request is not None
    assert finished.request["params"] == {"temperature": 0.2}
    assert finished.request["messages"] == [{"role": "user", "content": "Hello there"}]
    assert finished.response.content == "You said: Hello there"
    assert finished.response.finish_reason == "stop"
    assert finished.response.upstream_id == document["id"]
    assert finished.usage is not None and not finished.usage.estimated
    assert finished.usage.total_tokens == document["usage"]["total_tokens"]
    assert finished.latency_ms > 0 and finished.ttft_ms is None


@pytest.mark.parametrize("include_usage", [True, False])
async def test_stream(
    bus: Bus, start_worker: StartWorker, collection: str, include_usage: bool
) -> None:
    await start_worker()
    body = chat(
        "mock/echo",
        "stream this sentence to me please",
        stream=True,
        stream_options={"include_usage": include_usage},
    )
    call, raw = make_call(collection, body)
    reply = await roundtrip(bus.nc, call, raw)
    kinds = [k for k, _ in reply if k is not Frame.KEEPALIVE]
    assert kinds[-1] is Frame.DONE and set(kinds[:-1]) == {Frame.CHUNK}
    await stored_already(bus, call, "completion.finished")
    chunks = [orjson.loads(p) for k, p in reply if k is Frame.CHUNK]
    assert len(chunks) >= 4
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    assert chunks[0]["jetty_metadata"] == metadata(call)
    assert all("jetty_metadata" not in c for c in chunks[1:])
    if include_usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
        assert all("usage" not in c for c in chunks[:-1])
    else:
        assert all("usage" not in c for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "You said: stream this sentence to me please"

    finished = quick(await events(bus, call))
    assert finished.stream is True
    assert finished.response.content == text
    assert finished.usage is not None and finished.usage.completion_tokens > 0
    assert finished.ttft_ms is not None and 0 < finished.ttft_ms <= finished.latency_ms


@pytest.mark.parametrize("stream", [False, True])
async def test_mock_tool_call(
    bus: Bus, start_worker: StartWorker, collection: str, stream: bool
) -> None:
    await start_worker()
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    body = chat("mock/echo", tools=tools, tool_choice="required", stream=stream)
    call, raw = make_call(collection, body)
    reply = await roundtrip(bus.nc, call, raw)
    schema = "CreateChatCompletionStreamResponse" if stream else "CreateChatCompletionResponse"
    for kind, payload in reply:
        if kind in (Frame.CHUNK, Frame.RESPONSE):
            validate(schema, orjson.loads(payload))
    finished = (await events(bus, call))["completion.finished"]
    assert finished.response.finish_reason == "tool_calls"
    assert [(t.name, t.arguments) for t in finished.response.tool_calls] == [("lookup", "{}")]


async def test_large_base64_is_redacted_in_the_record(
    bus: Bus, start_worker: StartWorker, collection: str
) -> None:
    await start_worker()
    image = "data:image/png;base64," + "iVBORw0KGgo" * 400
    content = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": image}},
    ]
    body = {"model": "mock/echo", "messages": [{"role": "user", "content": content}]}
    call, raw = make_call(collection, body)
    await roundtrip(bus.nc, call, raw)
    recorded = quick(await events(bus, call)).request
    assert recorded is not None
    url = recorded["messages"][0]["content"][1]["image_url"]["url"]
    assert url.startswith("[redacted base64: media_type=image/png;")
    assert "iVBORw0KGgo" not in orjson.dumps(recorded).decode()


async def test_n_choices(bus: Bus, start_worker: StartWorker, collection: str) -> None:
    await start_worker()
    call, raw = make_call(collection, chat("mock/echo", "hi", n=2))
    reply = await roundtrip(bus.nc, call, raw)
    validate("CreateChatCompletionResponse", orjson.loads(reply[-1][1]))
    finished = (await events(bus, call))["completion.finished"]
    assert [c.index for c in finished.response.choices] == [0, 1]


@pytest.mark.parametrize(
    "case",
    [
        (True, "llama-3-70b", "GET /v1/models"),
        (True, "claude-3-opus", "ANTHROPIC_API_KEY"),
        (False, "gpt-4o", "OPENAI_API_KEY"),
        (False, "openai/gpt-4o", "OPENAI_API_KEY"),
        (True, "mock/", "GET /v1/models"),
    ],
)
async def test_unknown_model(
    bus: Bus, start_worker: StartWorker, collection: str, case: tuple[bool, str, str]
) -> None:
    openai, model, says = case
    await start_worker(openai=openai)
    call, raw = make_call(collection, chat(model))
    reply = await roundtrip(bus.nc, call, raw)
    error = error_of(reply)
    assert error["status"] == 404
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["code"] == "model_not_found"
    assert error["error"]["param"] == "model"
    assert says in error["error"]["message"] and model in error["error"]["message"]
    await stored_already(bus, call, "completion.failed")
    failed = quick(await events(bus, call))
    assert isinstance(failed, CompletionFailed)
    assert failed.provider == "none"
    assert failed.request is not None and failed.request["model"] == model
    assert failed.error.status == 404 and failed.error.code == "model_not_found"
    assert failed.usage is None


async def test_claim_checked_body(bus: Bus, start_worker: StartWorker, collection: str) -> None:
    await start_worker()
    claims = ClaimStore(bus.js)
    call, raw = make_call(collection, chat("mock/echo", "from the object store"))
    key = await claims.put(f"call/{call.trajectory_id}", raw)
    call = call.model_copy(update={"body_ref": key})
    reply = await roundtrip(bus.nc, call, b"")
    document = orjson.loads(reply[-1][1])
    assert document["choices"][0]["message"]["content"] == "You said: from the object store"
    with pytest.raises(ObjectNotFoundError):
        await claims.get(key)


async def test_models_list(bus: Bus, start_worker: StartWorker) -> None:
    await start_worker()
    msg = await bus.nc.request(subjects.MODELS_LIST, b"", timeout=5)
    document = orjson.loads(msg.data)
    validate("ListModelsResponse", document)
    ids = [m["id"] for m in document["data"]]
    assert ids == ["mock/echo", "gpt-4o", "openai/llama-local"]
    assert {m["owned_by"] for m in document["data"]} == {"mock", "openai"}


# --- the OpenAI-compatible provider end to end -------------------------------------------


async def test_passthrough(
    bus: Bus, start_worker: StartWorker, fake: FakeUpstream, collection: str
) -> None:
    await start_worker()
    call, raw = make_call(collection, chat("gpt-4o", jetty={"task": "t1"}, seed=7))
    reply = await roundtrip(bus.nc, call, raw)
    document = orjson.loads(reply[-1][1])
    validate("CreateChatCompletionResponse", document)
    assert document["system_fingerprint"] == "fp_fake0001"  # upstream fields pass through
    sent = fake.requests[-1]
    assert sent.body == {"model": "gpt-4o", "messages": body_messages(raw), "seed": 7}
    assert sent.headers["Authorization"] == f"Bearer {KEY}"
    finished = (await events(bus, call))["completion.finished"]
    assert finished.provider == "openai"
    assert finished.response.upstream_model == "gpt-4o"
    assert finished.usage is not None
    assert finished.usage.details["prompt.cached_tokens"] == 0


def body_messages(raw: bytes) -> Any:
    return orjson.loads(raw)["messages"]


async def test_passthrough_stream_tools(
    bus: Bus, start_worker: StartWorker, fake: FakeUpstream, collection: str
) -> None:
    await start_worker()
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    call, raw = make_call(collection, chat("openai/fake-tools", stream=True, tools=tools))
    reply = await roundtrip(bus.nc, call, raw)
    chunks = [orjson.loads(p) for k, p in reply if k is Frame.CHUNK]
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    assert all("usage" not in c for c in chunks)  # asked upstream, not shown to the client
    assert fake.requests[-1].body["stream_options"] == {"include_usage": True}
    assert fake.requests[-1].body["model"] == "fake-tools"
    finished = (await events(bus, call))["completion.finished"]
    (tool,) = finished.response.tool_calls
    assert tool.name == "get_weather"
    assert orjson.loads(tool.arguments) == {"city": "Paris", "unit": "celsius"}
    assert finished.response.finish_reason == "tool_calls"
    assert finished.usage is not None and not finished.usage.estimated


async def test_missing_upstream_usage_is_estimated(
    bus: Bus, start_worker: StartWorker, collection: str
) -> None:
    await start_worker()
    body = chat("openai/fake-no-usage", stream=True, stream_options={"include_usage": True})
    call, raw = make_call(collection, body)
    reply = await roundtrip(bus.nc, call, raw)
    last = orjson.loads(reply[-2][1])
    validate("CreateChatCompletionStreamResponse", last)
    assert last["choices"] == [] and last["usage"]["completion_tokens"] > 0
    finished = (await events(bus, call))["completion.finished"]
    assert finished.usage is not None and finished.usage.estimated


async def test_upstream_429(bus: Bus, start_worker: StartWorker, collection: str) -> None:
    await start_worker()
    call, raw = make_call(collection, chat("openai/fake-429", stream=True))
    error = error_of(await roundtrip(bus.nc, call, raw))
    assert error["status"] == 429 and error["retry_after"] == 7
    assert error["error"]["code"] == "rate_limit_exceeded"
    failed = (await events(bus, call))["completion.failed"]
    assert failed.error.status == 429 and failed.usage is None


async def test_cut_stream(bus: Bus, start_worker: StartWorker, collection: str) -> None:
    await start_worker()
    call, raw = make_call(collection, chat("openai/fake-cut", stream=True))
    reply = await roundtrip(bus.nc, call, raw)
    assert {k for k, _ in reply[:-1]} <= {Frame.CHUNK, Frame.KEEPALIVE}
    error = error_of(reply)
    assert error["status"] == 502 and error["error"]["code"] == "upstream_stream_interrupted"
    failed = (await events(bus, call))["completion.failed"]
    assert failed.response.content == "one two"
    assert failed.error.status == 502
    assert failed.usage is not None and failed.usage.estimated


async def test_total_timeout(
    bus: Bus, start_worker: StartWorker, fake: FakeUpstream, collection: str
) -> None:
    await start_worker(total_timeout=0.3)
    fake.script("sleepy", Script(first_byte_delay=3.0))
    call, raw = make_call(collection, chat("openai/sleepy"))
    error = error_of(await roundtrip(bus.nc, call, raw))
    assert error["status"] == 504 and error["error"]["type"] == "timeout_error"
    failed = (await events(bus, call))["completion.failed"]
    assert failed.error.status == 504


@pytest.mark.parametrize("stream", [False, True])
async def test_slow_call_is_requested_then_ended(
    bus: Bus, start_worker: StartWorker, fake: FakeUpstream, collection: str, stream: bool
) -> None:
    """A call still running after the requested delay (0.25 s) publishes
    completion.requested; its end event then leaves the request side out."""
    await start_worker()
    fake.script("pensive", Script(first_byte_delay=0.6))
    call, raw = make_call(collection, chat("openai/pensive", stream=stream, seed=3))
    reply = await roundtrip(bus.nc, call, raw)
    assert reply[-1][0] is (Frame.DONE if stream else Frame.RESPONSE)
    requested, finished = slow(await events(bus, call))
    assert isinstance(finished, CompletionFinished)
    assert (requested.provider, requested.model, requested.stream) == (
        "openai",
        "openai/pensive",
        stream,
    )
    assert requested.ingress == "chat.completions"
    assert requested.request["params"] == {"seed": 3}
    assert requested.received_at == finished.received_at


async def test_long_stream_is_running_before_it_ends(
    bus: Bus, start_worker: StartWorker, fake: FakeUpstream, collection: str
) -> None:
    """completion.requested goes out while the call runs, so a reader can see it."""
    await start_worker(requested_delay=0.05)
    fake.script("saga", Script(text="tick " * 200, chunk_delay=0.05))
    call, raw = make_call(collection, chat("openai/saga", stream=True))
    sub = await bus.js.subscribe(subjects.collection_events(call.collection), ordered_consumer=True)
    try:
        async with aclosing(frames(bus.nc, call, raw)) as reply:
            kind, _ = await anext(reply)
            assert kind is Frame.CHUNK
            # The first event of the call is stored while its stream is still going.
            first = Envelope.model_validate_json((await sub.next_msg(timeout=5)).data)
            assert (first.trajectory_id, first.type) == (call.trajectory_id, "completion.requested")
            await bus.nc.publish(subjects.CHAT_CANCEL, call.trajectory_id.encode())
    finally:
        await sub.unsubscribe()
    _, cancelled = slow(await events(bus, call))
    assert isinstance(cancelled, CompletionCancelled)


async def test_requested_at_once_without_delay(
    bus: Bus, start_worker: StartWorker, collection: str
) -> None:
    """``JETTY_PROXY_REQUESTED_DELAY=0``: every call publishes both events, as before."""
    await start_worker(requested_delay=0)
    call, raw = make_call(collection, chat("mock/echo", "now"))
    await roundtrip(bus.nc, call, raw)
    requested, finished = slow(await events(bus, call))
    assert isinstance(finished, CompletionFinished)
    assert requested.request["messages"] == [{"role": "user", "content": "now"}]
    # An unroutable call too.
    call, raw = make_call(collection, chat("nowhere/model"))
    await roundtrip(bus.nc, call, raw)
    requested, failed = slow(await events(bus, call))
    assert requested.provider == "none" and isinstance(failed, CompletionFailed)


async def test_keepalive_while_upstream_is_quiet(
    bus: Bus, start_worker: StartWorker, fake: FakeUpstream, collection: str
) -> None:
    await start_worker(keepalive_interval=0.1)
    fake.script("thinking", Script(first_byte_delay=0.6))
    call, raw = make_call(collection, chat("openai/thinking"))
    kinds = [k for k, _ in await roundtrip(bus.nc, call, raw)]
    assert Frame.KEEPALIVE in kinds and kinds[-1] is Frame.RESPONSE


# --- cancellation, overload and shutdown -------------------------------------------------


async def test_cancel_closes_upstream(
    bus: Bus, start_worker: StartWorker, fake: FakeUpstream, collection: str
) -> None:
    await start_worker()
    fake.script("long", Script(text="tick " * 100, chunk_delay=0.05))
    body = chat("openai/long", stream=True, stream_options={"include_usage": True})
    call, raw = make_call(collection, body)
    content = 0
    async for kind, payload in frames(bus.nc, call, raw):
        if kind is Frame.CHUNK and orjson.loads(payload)["choices"][0]["delta"].get("content"):
            content += 1
            if content == 3:
                await bus.nc.publish(subjects.CHAT_CANCEL, call.trajectory_id.encode())
                break
    # The upstream HTTP request is closed within a second of the cancel.
    await asyncio.wait_for(fake.disconnected.wait(), 1.0)
    found = await events(bus, call)
    cancelled = found["completion.cancelled"]
    assert isinstance(cancelled, CompletionCancelled)
    assert cancelled.reason == "client_disconnected"
    assert cancelled.response.content is not None
    assert cancelled.response.content.startswith("tick tick")
    assert cancelled.usage is not None and cancelled.usage.estimated
    assert cancelled.usage.completion_tokens > 0


async def in_flight(nc: NATS, call: ChatCall, body: bytes) -> AsyncIterator[tuple[Frame, bytes]]:
    """Frames of a call, returned once its first keep-alive proved a proxy is running it."""
    reply = frames(nc, call, body)
    async for kind, _ in reply:
        if kind is Frame.KEEPALIVE:
            return reply
        raise AssertionError(f"expected a keep-alive, got {kind}")
    raise AssertionError("no frames")


async def rest(reply: AsyncIterator[tuple[Frame, bytes]]) -> list[tuple[Frame, bytes]]:
    return [f async for f in reply]


async def test_overload_answers_503(
    bus: Bus, start_worker: StartWorker, fake: FakeUpstream, collection: str
) -> None:
    await start_worker(max_in_flight=1, keepalive_interval=0.05)
    fake.script("busy", Script(first_byte_delay=0.5))
    first = await in_flight(bus.nc, *make_call(collection, chat("openai/busy")))
    error = error_of(await roundtrip(bus.nc, *make_call(collection, chat("mock/echo"))))
    assert error["status"] == 503 and error["error"]["code"] == "proxy_overloaded"
    assert (await rest(first))[-1][0] is Frame.RESPONSE


async def test_shutdown_finishes_in_flight_calls(
    bus: Bus, start_worker: StartWorker, fake: FakeUpstream, collection: str
) -> None:
    worker = await start_worker(keepalive_interval=0.05)
    fake.script("finishing", Script(first_byte_delay=0.5))
    call, raw = make_call(collection, chat("openai/finishing"))
    running = await in_flight(bus.nc, call, raw)
    stopping = asyncio.create_task(worker.stop(grace=10))
    assert (await rest(running))[-1][0] is Frame.RESPONSE
    await stopping
    assert "completion.finished" in await events(bus, call)


async def test_shutdown_past_grace_cancels(
    bus: Bus, start_worker: StartWorker, fake: FakeUpstream, collection: str
) -> None:
    worker = await start_worker(keepalive_interval=0.05)
    fake.script("endless", Script(first_byte_delay=30))
    call, raw = make_call(collection, chat("openai/endless"))
    running = await in_flight(bus.nc, call, raw)
    stopping = asyncio.create_task(worker.stop(grace=0.1))
    error = error_of(await rest(running))
    await stopping
    assert error["status"] == 503 and error["error"]["code"] == "proxy_shutdown"
    cancelled = (await events(bus, call))["completion.cancelled"]
    assert cancelled.reason == "proxy_shutdown"
