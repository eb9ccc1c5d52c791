"""The event publisher's own JetStream acknowledgement path (shared.bus.AckInbox),
against the session's real NATS: a stored event, a duplicate, a subject no stream
takes, an error answer and a silence each give what ``JetStreamContext.publish``
would have (stored / stored / raised)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import nats.errors
import orjson
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import APIError, NoStreamResponseError
from pydantic import BaseModel

from jetty_cli.embedded import EmbeddedNats
from shared import subjects
from shared.bus import AckInbox, AckTimeout, EventPublisher, connect, ensure_streams
from shared.events.annotations import LabelSet
from shared.ids import new_event_id


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    conn = await connect(nats_url, name="ack-inbox-test")
    await ensure_streams(conn.jetstream())
    yield conn
    await conn.drain()


def _subject() -> str:
    return subjects.event_subject("ack-inbox-test", "completion.finished")


async def test_a_stored_event_and_its_duplicate_are_acknowledged(nc: NATS) -> None:
    js = nc.jetstream()
    acks = AckInbox(nc)
    before = (await js.stream_info(subjects.EVENTS_STREAM)).state.messages
    await acks.publish(_subject(), b'{"n":1}', "ack-inbox-dup", timeout=2)
    # Same Nats-Msg-Id: JetStream answers without storing it twice.
    await acks.publish(_subject(), b'{"n":1}', "ack-inbox-dup", timeout=2)
    after = (await js.stream_info(subjects.EVENTS_STREAM)).state.messages
    assert after - before == 1


async def test_the_answer_can_be_awaited_after_other_work(nc: NATS) -> None:
    acks = AckInbox(nc)
    futures = [
        await acks.send(_subject(), b"{}", f"ack-inbox-many-{i}", timeout=2) for i in range(50)
    ]
    for future in futures:
        AckInbox.result(await future)
    assert not acks._waiting  # every answer found its future


async def test_racing_first_publications_share_one_subscription(nc: NATS) -> None:
    acks = AckInbox(nc)
    subscriptions = len(nc._subs)
    futures = await asyncio.gather(
        *(acks.send(_subject(), b"{}", f"ack-inbox-race-{i}", timeout=2) for i in range(10))
    )
    for future in futures:
        AckInbox.result(await future)
    assert len(nc._subs) == subscriptions + 1
    # A waiter that goes away is forgotten at once, not when its deadline passes.
    gone = await acks.send(_subject(), b"{}", "ack-inbox-gone", timeout=30)
    gone.cancel()
    await asyncio.sleep(0)
    assert not acks._waiting


async def test_a_subject_no_stream_takes_is_refused(nc: NATS) -> None:
    with pytest.raises(NoStreamResponseError):
        await AckInbox(nc).publish("ack-inbox-test.nowhere", b"{}", "ack-inbox-nowhere", 2)


async def test_an_error_answer_and_a_silence_raise(nc: NATS) -> None:
    """A responder standing in for a stream: one that answers with a JetStream API
    error, one that never answers."""

    async def refuse(msg: Msg) -> None:
        error = {"code": 400, "err_code": 10060, "description": "expected stream does not match"}
        await msg.respond(orjson.dumps({"error": error}))

    async def ignore(msg: Msg) -> None:
        return None

    refusing = await nc.subscribe("ack-inbox-test.refuse", cb=refuse)
    silent = await nc.subscribe("ack-inbox-test.silent", cb=ignore)
    acks = AckInbox(nc)
    try:
        with pytest.raises(APIError) as refused:
            await acks.publish("ack-inbox-test.refuse", b"{}", "ack-inbox-refuse", 2)
        assert refused.value.err_code == 10060
        started = asyncio.get_running_loop().time()
        with pytest.raises(AckTimeout):
            await acks.publish("ack-inbox-test.silent", b"{}", "ack-inbox-silent", 0.2)
        assert asyncio.get_running_loop().time() - started < 1.5
        assert not acks._waiting
    finally:
        await refusing.unsubscribe()
        await silent.unsubscribe()


def _annotation(n: int) -> BaseModel:
    return LabelSet(key="n", value=str(n), at=datetime.now(UTC))


async def _stored_ids(nc: NATS, ids: set[str]) -> set[str]:
    """Which of ``ids`` are on the events stream (read back by an ordered consumer)."""
    sub = await nc.jetstream().subscribe(subjects.EVENTS_ALL, ordered_consumer=True)
    found: set[str] = set()
    try:
        while found != ids:
            try:
                msg = await sub.next_msg(timeout=2)
            except nats.errors.TimeoutError:
                break
            eid = orjson.loads(msg.data).get("id")
            if eid in ids:
                found.add(eid)
    finally:
        await sub.unsubscribe()
    return found


async def test_begin_then_wait_keeps_the_publish_guarantee(
    nc: NATS, nats_server: EmbeddedNats
) -> None:
    """``begin`` sends and returns; ``wait`` returns once stored. With NATS down,
    ``begin`` still returns, ``wait`` gives up after ``ack_timeout`` and the event
    is stored once NATS is back, as with ``publish(wait=True)``."""
    publisher = EventPublisher(nc, nc.jetstream(), "test/acks", 256 * 1024, ack_timeout=0.5)
    pending = await publisher.begin("acme", "tr_acks_up", _annotation(1), event_id="acks-up")
    await pending.wait()
    assert publisher.pending == 0
    await asyncio.to_thread(nats_server.stop)
    try:
        pending = await publisher.begin("acme", "tr_acks_down", _annotation(2), "acks-down")
        started = asyncio.get_running_loop().time()
        await pending.wait()
        assert asyncio.get_running_loop().time() - started < 2.0
        assert publisher.pending == 1  # handed to the background, not dropped
    finally:
        await asyncio.to_thread(nats_server.start)
    await publisher.flush(timeout=30)
    assert publisher.pending == 0
    assert await _stored_ids(nc, {"acks-up", "acks-down"}) == {"acks-up", "acks-down"}


def test_event_ids_are_random_version_4_uuids() -> None:
    ids = {new_event_id() for _ in range(2000)}
    assert len(ids) == 2000
    for eid in ids:
        parsed = uuid.UUID(hex=eid)
        assert (parsed.version, parsed.variant, parsed.hex) == (4, uuid.RFC_4122, eid)
