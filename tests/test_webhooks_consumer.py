"""The webhooks service consumes only what its endpoints want, on a real NATS:
no endpoint means no consumer at all; the first endpoint gets every event
published since its registration, even those before the service saw it; a
filter grows and shrinks with the endpoints without dropping what the
remaining ones are owed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from services.webhooks.endpoints import ConsumerControl, Endpoints, covers, wanted_subjects
from services.webhooks.settings import WebhookSettings
from shared import subjects
from shared.bus import connect, ensure_streams
from shared.webhooks import StoredWebhook, WebhookStore


def hook(hook_id: str, collection: str, *types: str) -> StoredWebhook:
    return StoredWebhook(
        id=hook_id,
        collection=collection,
        url="https://example.org/hook",
        event_types=list(types),
        created_at=datetime.now(UTC),
        secret="whsec_" + "A" * 32,
    )


def test_wanted_subjects_never_overlap() -> None:
    hooks = [
        hook("wh_1", "acme", "runbook.failed", "completion.*"),
        hook("wh_2", "acme", "runbook.*"),
        hook("wh_3", "beta", "*"),
        hook("wh_4", "beta", "runbook.failed"),
        hook("wh_5", "gamma", "completion.failed"),
    ]
    assert wanted_subjects(hooks) == [
        "jetty.events.acme.completion.>",
        "jetty.events.acme.runbook.>",
        "jetty.events.beta.>",
        "jetty.events.gamma.completion.failed",
    ]
    assert wanted_subjects([]) == []
    assert covers("a.b.>", "a.b.c.d") and covers("a.*.c", "a.b.c") and covers("a.>", "a.*")
    assert not covers("a.b.>", "a.b") and not covers("a.b.c", "a.*.c")
    assert not covers("a.b", "a.b.c") and not covers("a.*", "a.>")


@pytest.fixture
async def js(nats_url: str) -> AsyncIterator[JetStreamContext]:
    nc = await connect(nats_url, name="test-webhooks-consumer")
    js = nc.jetstream(timeout=10)
    with contextlib.suppress(NotFoundError):
        await js.delete_stream(subjects.EVENTS_STREAM)
    with contextlib.suppress(NotFoundError):
        await js.delete_key_value(subjects.WEBHOOKS_BUCKET)
    await ensure_streams(js)
    try:
        yield js
    finally:
        await nc.drain()


async def pending(js: JetStreamContext) -> int | None:
    try:
        info = await js.consumer_info(subjects.EVENTS_STREAM, subjects.WEBHOOKS_DURABLE)
    except NotFoundError:
        return None
    return info.num_pending + info.num_ack_pending


async def publish(js: JetStreamContext, collection: str, event_type: str) -> None:
    await js.publish(subjects.event_subject(collection, event_type), b"{}")


async def test_the_consumer_follows_the_endpoints(js: JetStreamContext) -> None:
    store = WebhookStore(js)
    endpoints = Endpoints(store)
    control = ConsumerControl(js, WebhookSettings())
    watching = asyncio.create_task(endpoints.run())
    try:
        await asyncio.wait_for(endpoints.ready.wait(), 10)
        # No endpoint: no consumer, events cost the service nothing.
        assert await control.reconcile(endpoints.all()) == []
        await publish(js, "acme", "completion.finished")
        assert await pending(js) is None

        # Registered, then an event, then the service catches up: still owed.
        first = hook("wh_1", "acme", "runbook.failed")
        await store.put(first)
        await publish(js, "acme", "runbook.failed")
        await publish(js, "acme", "completion.finished")  # nobody wants it
        await asyncio.wait_for(endpoints.changed.wait(), 10)
        endpoints.changed.clear()
        assert await control.reconcile(endpoints.all()) == ["jetty.events.acme.runbook.failed"]
        assert await pending(js) == 1

        # A second endpoint widens the filter in place; the first's event stays owed.
        await store.put(hook("wh_2", "acme", "completion.*"))
        await asyncio.wait_for(endpoints.changed.wait(), 10)
        endpoints.changed.clear()
        assert await control.reconcile(endpoints.all()) == [
            "jetty.events.acme.completion.>",
            "jetty.events.acme.runbook.failed",
        ]
        await publish(js, "acme", "completion.finished")
        await publish(js, "beta", "completion.finished")  # another collection
        # The first's event, the new one, and the completion from before: nothing
        # fetched past it yet, so the wider filter takes it in too.
        assert await pending(js) == 3

        # The second goes: its subjects leave the filter, the first's stay.
        await store.delete("acme", "wh_2")
        await asyncio.wait_for(endpoints.changed.wait(), 10)
        endpoints.changed.clear()
        assert await control.reconcile(endpoints.all()) == ["jetty.events.acme.runbook.failed"]
        assert await pending(js) == 1

        # None left: the consumer is gone.
        await store.delete("acme", "wh_1")
        await asyncio.wait_for(endpoints.changed.wait(), 10)
        assert await control.reconcile(endpoints.all()) == []
        assert await pending(js) is None
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
