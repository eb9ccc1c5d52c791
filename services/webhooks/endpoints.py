"""Which events the delivery service consumes: only those some endpoint wants.

The endpoints are watched live in their KV bucket (no read per event), and the
durable consumer ``jetty-webhooks`` is kept filtered on exactly the subjects
they can want (``filter_subjects``, one per endpoint collection and event
type or family, none covering another):

* no endpoint at all: there is no consumer, the service fetches nothing and the
  events stream costs it nothing;
* the first endpoint (or the first after none): the consumer is created from
  the earliest endpoint's ``created_at`` (``DeliverPolicy.BY_START_TIME``), so
  every event published after a registration reaches it, however late the
  service sees the registration;
* endpoints added or removed: the filter is updated in place; the consumer
  keeps its position and its pending retries. A subject leaves the filter only
  when no endpoint wants it any more, so no delivery an endpoint is owed is
  dropped. An endpoint added while others exist gets the events published from
  the moment the service saw it (the watch, normally milliseconds after the
  registration): an event the consumer had already passed is not rewound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from services.webhooks.settings import WebhookSettings
from shared import subjects
from shared.webhooks import StoredWebhook, WebhookStore

log = logging.getLogger(__name__)


def wanted_subjects(hooks: Iterable[StoredWebhook]) -> list[str]:
    """The stream subjects the endpoints want, none covering another (JetStream
    refuses overlapping filters), sorted."""
    found: set[str] = set()
    for hook in hooks:
        for pattern in hook.event_types:
            if pattern == "*":
                found.add(subjects.collection_events(hook.collection))
            elif pattern.endswith(".*"):
                family = subjects.event_subject(hook.collection, pattern[:-2])
                found.add(family + ".>")
            else:
                found.add(subjects.event_subject(hook.collection, pattern))
    return sorted(s for s in found if not any(o != s and covers(o, s) for o in found))


def covers(pattern: str, subject: str) -> bool:
    """Whether every subject ``subject`` matches is matched by ``pattern``."""
    left, right = pattern.split("."), subject.split(".")
    for i, token in enumerate(left):
        if token == ">":
            return len(right) > i
        if i >= len(right) or right[i] == ">":
            return False
        if token != "*" and (token != right[i] or right[i] == "*"):
            return False
    return len(left) == len(right)


def consumer_config(
    settings: WebhookSettings, filters: list[str], start: datetime | None
) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=subjects.WEBHOOKS_DURABLE,
        filter_subjects=filters,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.BY_START_TIME if start else DeliverPolicy.NEW,
        opt_start_time=start,
        # Time to deliver one event to all its endpoints before the stream resends it.
        ack_wait=settings.webhook_timeout * 3 + 5,
        max_deliver=len(settings.webhook_retry_delays) + 2,
        max_ack_pending=1000,
    )


class Endpoints:
    """The endpoints of every collection, kept current by a KV watch; ``changed``
    is set whenever they change (and once the initial values are in)."""

    def __init__(self, store: WebhookStore) -> None:
        self._store = store
        self._hooks: dict[str, StoredWebhook] = {}
        self.changed = asyncio.Event()
        self.ready = asyncio.Event()

    def of_collection(self, collection: str) -> list[StoredWebhook]:
        found = [h for h in self._hooks.values() if h.collection == collection]
        return sorted(found, key=lambda h: h.created_at)

    def all(self) -> list[StoredWebhook]:
        return sorted(self._hooks.values(), key=lambda h: (h.created_at, h.id))

    async def run(self) -> None:
        """Watch the bucket until cancelled; a broken watch is resumed (it starts
        with the current values again, so nothing is missed)."""
        while True:
            try:
                bucket = await self._store.endpoints_bucket()
                watcher = await bucket.watchall()
                try:
                    seen: dict[str, StoredWebhook] = {}
                    async for entry in watcher:
                        if entry is None:  # the current values are all in
                            self._hooks = seen
                            self.ready.set()
                            self.changed.set()
                            continue
                        self._apply(entry, seen if not self.ready.is_set() else self._hooks)
                finally:
                    with contextlib.suppress(Exception):
                        await watcher.stop()
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                log.warning("webhook endpoints watch interrupted (%r); resuming", exc)
                self.ready.clear()
                await asyncio.sleep(1.0)

    def _apply(self, entry: Any, into: dict[str, StoredWebhook]) -> None:
        if entry.operation in ("DEL", "PURGE") or not entry.value:
            into.pop(entry.key, None)
        else:
            try:
                into[entry.key] = StoredWebhook.model_validate_json(entry.value)
            except ValidationError as exc:
                log.warning("ignoring an unreadable webhook %s: %s", entry.key, exc)
                return
        if self.ready.is_set():
            self.changed.set()


class ConsumerControl:
    """Creates, updates or deletes the durable consumer to match the endpoints."""

    def __init__(self, js: JetStreamContext, settings: WebhookSettings) -> None:
        self._js = js
        self._settings = settings
        self.filters: list[str] = []

    async def current(self) -> list[str] | None:
        """The filter of the existing consumer, ``None`` if there is none."""
        try:
            info = await self._js.consumer_info(subjects.EVENTS_STREAM, subjects.WEBHOOKS_DURABLE)
        except NotFoundError:
            return None
        config = info.config
        return sorted(config.filter_subjects or [config.filter_subject or subjects.EVENTS_ALL])

    async def reconcile(self, hooks: list[StoredWebhook]) -> list[str]:
        """Make the consumer want what ``hooks`` want; the filter now in force."""
        wanted = wanted_subjects(hooks)
        existing = await self.current()
        if not wanted:
            if existing is not None:
                with contextlib.suppress(NotFoundError):
                    await self._js.delete_consumer(
                        subjects.EVENTS_STREAM, subjects.WEBHOOKS_DURABLE
                    )
                log.info("no webhook endpoints: not consuming events")
        elif existing is None:
            start = min(h.created_at for h in hooks)
            await self._js.add_consumer(
                subjects.EVENTS_STREAM, consumer_config(self._settings, wanted, start)
            )
            log.info("consuming %s (events since %s)", wanted, start.isoformat())
        elif existing != wanted:
            info = await self._js.consumer_info(subjects.EVENTS_STREAM, subjects.WEBHOOKS_DURABLE)
            config = info.config
            config.filter_subject = None
            config.filter_subjects = wanted
            await self._js.add_consumer(subjects.EVENTS_STREAM, config)
            log.info("consuming %s", wanted)
        self.filters = wanted
        return wanted


async def keep_consumer(
    endpoints: Endpoints, control: ConsumerControl, stop: asyncio.Event, retry: float = 1.0
) -> None:
    """Reconcile the consumer on every change of the endpoints until ``stop``."""
    while not stop.is_set():
        waiter = asyncio.ensure_future(endpoints.changed.wait())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        stopper.cancel()
        if stop.is_set():
            return
        endpoints.changed.clear()
        try:
            await control.reconcile(endpoints.all())
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            log.warning("could not update the webhooks consumer (%r); retrying", exc)
            endpoints.changed.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), retry)
