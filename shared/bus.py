"""Thin NATS/JetStream adapters: connecting, declaring streams and buckets, and
publishing events so that none is lost.

Exception tree::

    BusError
     └── BusUnavailable      not connected to NATS right now (answer 503)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import nats
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, BucketNotFoundError, NoStreamResponseError, NotFoundError
from pydantic import BaseModel

from shared import metrics, subjects
from shared.events.envelope import PAYLOAD_VERSION, Envelope
from shared.events.registry import AnyEnvelope, EventData, parse_data_json, type_name
from shared.ids import new_event_id
from shared.key_usage import ensure_key_rates_bucket, ensure_key_usage_bucket
from shared.runs import ensure_runs_bucket
from shared.secrets import MaskRegistry

log = logging.getLogger(__name__)


class BusError(Exception):
    pass


class BusUnavailable(BusError):
    pass


def source_name(service: str) -> str:
    return f"{service}/{socket.gethostname()}-{os.getpid()}"


async def connect(url: str, name: str, **kwargs: Any) -> NATS:
    """Connect and keep reconnecting for ever; callers check ``nc.is_connected``."""

    async def _error(exc: Exception) -> None:
        log.warning("nats error: %s", exc)

    async def _disconnected() -> None:
        log.warning("nats disconnected")

    async def _reconnected() -> None:
        log.info("nats reconnected")

    options: dict[str, Any] = {
        "servers": [u.strip() for u in url.split(",") if u.strip()],
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 2,
        "error_cb": _error,
        "disconnected_cb": _disconnected,
        "reconnected_cb": _reconnected,
        # Publishing while disconnected must fail fast instead of buffering
        # unboundedly; the event publisher keeps its own outbox.
        "pending_size": 8 * 1024 * 1024,
    }
    options.update(kwargs)
    return await nats.connect(**options)


async def connect_until_up(url: str, name: str) -> NATS:
    """:func:`connect`, retried with backoff (saying why) until NATS answers: for
    services that cannot work without the bus and may start before it."""
    delay = 0.2
    while True:
        try:
            return await connect(url, name)
        except Exception as exc:  # nats-py raises several unrelated types here
            log.warning("cannot reach NATS yet (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def ensure_streams(
    js: JetStreamContext, replicas: int = 1, retention_days: float | None = None
) -> None:
    """Declare the events stream and the buckets (idempotent; safe from every service).

    ``retention_days`` (``JETTY_RETENTION_DAYS``) becomes the stream's ``max_age``;
    ``None`` leaves whatever age limit the stream has (a tool that does not know
    the setting must not lift it)."""
    max_age = retention_days * 86400.0 if retention_days else None
    config = StreamConfig(
        name=subjects.EVENTS_STREAM,
        subjects=[subjects.EVENTS_ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        num_replicas=replicas,
        duplicate_window=600.0,
        description="Jetty trajectory events: the source of truth",
    )
    try:
        info = await js.stream_info(subjects.EVENTS_STREAM)
        config.max_age = max_age if max_age is not None else info.config.max_age
        await js.update_stream(config)
    except NotFoundError:
        config.max_age = max_age
        await js.add_stream(config)
    await ensure_object_store(js, replicas)
    await ensure_tokens_bucket(js, replicas)
    await ensure_runs_bucket(js, replicas)
    await ensure_key_usage_bucket(js, replicas)
    await ensure_key_rates_bucket(js, replicas)


async def ensure_object_store(js: JetStreamContext, replicas: int = 1) -> Any:
    try:
        return await js.object_store(subjects.CLAIMS_BUCKET)
    except (BucketNotFoundError, NotFoundError):
        # nats-py overwrites config.bucket with the ``bucket`` argument: pass both.
        return await js.create_object_store(
            bucket=subjects.CLAIMS_BUCKET,
            config=ObjectStoreConfig(
                bucket=subjects.CLAIMS_BUCKET,
                storage=StorageType.FILE,
                replicas=replicas,
                description="claim-check bodies too large for a NATS message",
            ),
        )


async def ensure_tokens_bucket(js: JetStreamContext, replicas: int = 1) -> Any:
    try:
        return await js.key_value(subjects.TOKENS_BUCKET)
    except (BucketNotFoundError, NotFoundError):
        return await js.create_key_value(
            config=KeyValueConfig(
                bucket=subjects.TOKENS_BUCKET,
                history=1,
                storage=StorageType.FILE,
                replicas=replicas,
                description="API token hashes -> collection",
            )
        )


def recorder_consumer_config() -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=subjects.RECORDER_DURABLE,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=30.0,
        max_deliver=-1,
        max_ack_pending=20_000,
        filter_subject=subjects.EVENTS_ALL,
    )


class ClaimStore:
    """Claim check: bodies too big for a NATS message live in the object store."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._obs: Any = None

    async def _store(self) -> Any:
        if self._obs is None:
            self._obs = await ensure_object_store(self._js)
        return self._obs

    async def put(self, key: str, data: bytes) -> str:
        obs = await self._store()
        await obs.put(key, data)
        return key

    async def get(self, key: str) -> bytes:
        obs = await self._store()
        result = await obs.get(key)
        data: bytes = result.data or b""
        return data

    async def delete(self, key: str) -> None:
        obs = await self._store()
        with contextlib.suppress(NotFoundError):
            await obs.delete(key)


async def event_data(envelope: AnyEnvelope, claims: ClaimStore) -> EventData:
    """An event's payload, read from the claim-check store when it travelled by
    reference. Raises :class:`ValueError` for an event with neither, and what the
    store or validation raise otherwise."""
    if envelope.data is not None:
        return envelope.data
    if not envelope.data_ref:
        raise ValueError(f"event {envelope.id} has no data")
    return parse_data_json(envelope.type, await claims.get(envelope.data_ref))


def encode_event(envelope: Envelope) -> bytes:
    return orjson.dumps(envelope.model_dump(mode="json", exclude_none=True))


class AckTimeout(BusError):
    """JetStream did not acknowledge a publication in time."""


class AckInbox:
    """JetStream publications and their acknowledgements over one wildcard inbox
    subscription of our own: what ``JetStreamContext.publish`` does, minus what it
    costs per event that we do not need (a ``wait_for`` per request, the standard
    library's JSON parser and a ``PubAck`` object for an answer we only check).

    ``send`` puts the message on the wire and returns the future of its answer, so
    a caller can do other work while JetStream stores it; ``result`` then checks
    the answer. The subscription is made once and survives reconnects (nats-py
    renews subscriptions); a publication lost in a reconnect times out and is
    retried by the caller with the same ``Nats-Msg-Id``.
    """

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._prefix = ""
        self._sub: Any = None
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._seq = 0
        self._subscribing = asyncio.Lock()

    async def _on_answer(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject[len(self._prefix) :], None)
        if future is not None and not future.done():
            future.set_result(msg)

    async def send(
        self, subject: str, payload: bytes, msg_id: str, timeout: float
    ) -> asyncio.Future[Msg]:
        if self._sub is None:
            async with self._subscribing:  # the first publications may race here
                if self._sub is None:
                    prefix = self._nc.new_inbox() + "."
                    self._sub = await self._nc.subscribe(prefix + "*", cb=self._on_answer)
                    self._prefix = prefix
        self._seq += 1
        token = str(self._seq)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Msg] = loop.create_future()
        self._waiting[token] = future
        expiry = loop.call_later(timeout, self._expire, token)

        def settled(_: asyncio.Future[Msg]) -> None:
            # Answered, expired or cancelled (a caller gone): forget it either way.
            expiry.cancel()
            self._waiting.pop(token, None)

        future.add_done_callback(settled)
        try:
            await self._nc.publish(
                subject, payload, reply=self._prefix + token, headers={"Nats-Msg-Id": msg_id}
            )
        except BaseException:
            future.cancel()
            raise
        return future

    def _expire(self, token: str) -> None:
        future = self._waiting.pop(token, None)
        if future is not None and not future.done():
            future.set_exception(AckTimeout("no acknowledgement from JetStream in time"))

    @staticmethod
    def result(msg: Msg) -> None:
        """Raise unless ``msg`` says the publication is stored (or a duplicate of one
        that is: JetStream de-duplicates by ``Nats-Msg-Id``)."""
        headers = msg.headers
        if headers and headers.get("Status") == "503":
            raise NoStreamResponseError
        answer = orjson.loads(msg.data)
        if "error" in answer:
            raise APIError.from_error(answer["error"])

    async def publish(self, subject: str, payload: bytes, msg_id: str, timeout: float) -> None:
        """Publish and wait for the acknowledgement."""
        self.result(await (await self.send(subject, payload, msg_id, timeout)))


@dataclass(slots=True)
class PendingEvent:
    """An event sent by :meth:`EventPublisher.begin`, its acknowledgement not yet
    awaited."""

    _publisher: EventPublisher
    _subject: str
    _encoded: bytes
    eid: str
    _future: asyncio.Future[Msg] | None
    _sent: float

    async def wait(self) -> None:
        """Return once JetStream has the event, or after the publisher's bounded wait
        with the event handed to the background (as ``publish(wait=True)``)."""
        publisher = self._publisher
        if self._future is not None:
            try:
                AckInbox.result(await self._future)
                metrics.PUBLISH_SECONDS.observe(time.perf_counter() - self._sent)
                return
            except asyncio.CancelledError:
                publisher._deliver_later(self._subject, self._encoded, self.eid)
                raise
            except Exception as exc:  # retried below with the same id
                log.warning("event %s not stored yet (%s); retrying", self.eid, exc)
        # What is left of the bounded wait, as if publish(wait=True) had been called.
        left = publisher.ack_timeout - (time.perf_counter() - self._sent)
        await publisher._deliver_now(self._subject, self._encoded, self.eid, max(0.0, left))


class EventPublisher:
    """Publishes events with a unique ``Nats-Msg-Id``; never drops one.

    An event whose acknowledgement does not arrive is retried with the same id
    (JetStream de-duplicates) until it is stored; :meth:`flush` waits for them.
    """

    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        source: str,
        claim_threshold: int,
        ack_timeout: float = 2.0,
    ) -> None:
        self._nc = nc
        self._js = js
        self._source = source
        self._claims = ClaimStore(js)
        self._threshold = claim_threshold
        self._ack_timeout = ack_timeout
        self._acks = AckInbox(nc)
        self._pending: set[asyncio.Task[None]] = set()
        metrics.PENDING_ACKS.set_function(lambda: len(self._pending))
        #: secret masks of the runs this process serves (shared/secrets.py); every
        #: event of such a trajectory is masked before it leaves
        self.masks = MaskRegistry()

    async def build(
        self,
        collection: str,
        trajectory_id: str,
        data: BaseModel,
        event_id: str | None = None,
    ) -> tuple[str, bytes, str]:
        """The serialised envelope, byte for byte what ``encode_event`` gives for the
        same :class:`Envelope` (tested), without building one: the payload is
        serialised once and spliced in."""
        event_type = type_name(data)
        eid = event_id or new_event_id()
        payload = data.__pydantic_serializer__.to_json(data)
        if self.masks and (masker := self.masks.get(trajectory_id)) is not None:
            payload = masker.mask_bytes(payload)
        head = orjson.dumps(
            {
                "id": eid,
                "type": event_type,
                "source": self._source,
                "time": datetime.now(UTC),
                "trajectory_id": trajectory_id,
                "collection": collection,
                "v": PAYLOAD_VERSION,
            },
            option=orjson.OPT_UTC_Z,  # times as pydantic writes them: ...Z
        )
        encoded = b'%b,"data":%b}' % (head[:-1], payload)
        if len(encoded) > self._threshold:
            key = f"event/{eid}"
            await self._claims.put(key, payload)
            encoded = b'%b,"data_ref":%b}' % (head[:-1], orjson.dumps(key))
        return eid, encoded, subjects.event_subject(collection, event_type)

    async def publish(
        self,
        collection: str,
        trajectory_id: str,
        data: BaseModel,
        *,
        wait: bool = True,
        event_id: str | None = None,
    ) -> str:
        """Publish one event. ``wait`` waits (bounded) for the first acknowledgement;
        either way the event keeps being retried in the background until stored."""
        eid, encoded, subject = await self.build(collection, trajectory_id, data, event_id)
        if wait:
            await self._deliver_now(subject, encoded, eid)
        else:
            self._deliver_later(subject, encoded, eid)
        return eid

    async def begin(
        self, collection: str, trajectory_id: str, data: BaseModel, event_id: str | None = None
    ) -> PendingEvent:
        """Send one event now and return at once: :meth:`PendingEvent.wait` then gives
        ``publish(wait=True)``'s guarantee, so the caller can do other work while
        JetStream stores it. The caller must await ``wait`` (in a ``finally``)."""
        eid, encoded, subject = await self.build(collection, trajectory_id, data, event_id)
        future: asyncio.Future[Msg] | None = None
        if self._nc.is_connected:
            try:
                future = await self._acks.send(subject, encoded, eid, self._ack_timeout)
            except asyncio.CancelledError:
                self._deliver_later(subject, encoded, eid)  # never lost, as in publish()
                raise
            except Exception as exc:  # wait() retries it
                log.warning("event %s not sent yet (%s); retrying", eid, exc)
        return PendingEvent(self, subject, encoded, eid, future, time.perf_counter())

    async def _attempt(self, subject: str, payload: bytes, eid: str, timeout: float) -> None:
        if not self._nc.is_connected:
            raise BusUnavailable("not connected")
        start = time.perf_counter()
        await self._acks.publish(subject, payload, eid, timeout)
        metrics.PUBLISH_SECONDS.observe(time.perf_counter() - start)

    async def _deliver_now(
        self, subject: str, payload: bytes, eid: str, within: float | None = None
    ) -> None:
        """Deliver from the caller's task for up to ``ack_timeout`` (or ``within``
        seconds), then hand over to
        the background. The common case is one request with no task, shield or extra
        timer around it (those cost 15-30 us an event here, ~10% of publishing one).
        A caller cancelled meanwhile hands the event over too, so it is never lost."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self._ack_timeout if within is None else within)
        delay = 0.05
        try:
            while (remaining := deadline - loop.time()) > 0:
                try:
                    await self._attempt(subject, payload, eid, remaining)
                    return
                except Exception as exc:  # retried: the event must not be lost
                    log.warning("event %s not stored yet (%s); retrying", eid, exc)
                await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
                delay = min(delay * 2, 2.0)
        except asyncio.CancelledError:
            self._deliver_later(subject, payload, eid)
            raise
        self._deliver_later(subject, payload, eid)

    def _deliver_later(self, subject: str, payload: bytes, eid: str) -> None:
        task = asyncio.create_task(self._deliver(subject, payload, eid))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _deliver(self, subject: str, payload: bytes, eid: str) -> None:
        delay = 0.05
        while True:
            try:
                await self._attempt(subject, payload, eid, self._ack_timeout)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # retried: the event must not be lost
                log.warning("event %s not stored yet (%s); retrying in %.2fs", eid, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    @property
    def ack_timeout(self) -> float:
        return self._ack_timeout

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def flush(self, timeout: float = 30.0) -> None:
        if not self._pending:
            return
        _, not_done = await asyncio.wait(set(self._pending), timeout=timeout)
        if not_done:
            log.error("%d events could not be stored before shutdown", len(not_done))
            for task in not_done:
                task.cancel()
