"""The durable pull consumer: JetStream ``EVENTS`` -> Postgres, one transaction per batch.

Delivery guarantees, in order of importance:

* Nothing is acked before its transaction committed. If Postgres is down the batch
  is held (``in_progress`` keeps JetStream from redelivering it meanwhile) and
  retried with backoff until it commits; nothing is dropped.
* A message that can never be projected is written to ``dead_events`` in the same
  transaction and then terminated, so it cannot block the stream.
* Redelivery is harmless: the projection is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError

from services.recorder.batch import (
    DeadEvent,
    Decoded,
    Delivery,
    Retryable,
    TimedClaimStore,
    commit,
    decode,
)
from services.recorder.settings import RecorderSettings
from shared import metrics, subjects
from shared.bus import recorder_consumer_config
from shared.db.pool import is_transient

if TYPE_CHECKING:
    from shared.db.pool import Pool

log = logging.getLogger(__name__)

Subscription = JetStreamContext.PullSubscription


class Recorder:
    """Runs until :meth:`stop`; then finishes the batch in hand and returns."""

    def __init__(
        self,
        js: JetStreamContext,
        pool: Pool,
        settings: RecorderSettings,
        stop_event: asyncio.Event | None = None,
    ) -> None:
        self._js = js
        self._pool = pool
        self._settings = settings
        self._claims = TimedClaimStore(js, settings.recorder_claim_timeout)
        self._stop = stop_event or asyncio.Event()
        self._stop_time: float | None = None
        # Counters for logs and tests.
        self.applied_batches = 0
        self.acked = 0
        self.dead = 0

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def run(self) -> None:
        sub = await self._subscribe()
        if sub is None:
            return
        try:
            while not self.stopping:
                msgs = await self._fetch(sub)
                if msgs:
                    await self._process(msgs)
                if len(msgs) < self._settings.recorder_batch_size:
                    await self._sleep_unless_stopped(self._settings.recorder_linger)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _subscribe(self) -> Subscription | None:
        """Create or update the durable consumer and bind to it; waits for NATS."""
        delay = self._settings.recorder_retry_initial
        while not self.stopping:
            try:
                await self._js.add_consumer(
                    subjects.EVENTS_STREAM,
                    config=recorder_consumer_config(),
                    timeout=self._settings.recorder_nats_timeout,
                )
                return await self._js.pull_subscribe_bind(
                    durable=subjects.RECORDER_DURABLE, stream=subjects.EVENTS_STREAM
                )
            except BadRequestError:
                raise  # a consumer config the server refuses: retrying cannot help
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                log.warning("cannot bind the recorder consumer yet (%s); retrying", exc)
                await self._sleep_unless_stopped(delay)
                delay = self._next_delay(delay)
        return None

    async def _fetch(self, sub: Subscription) -> list[Msg]:
        try:
            msgs: list[Msg] = await sub.fetch(
                self._settings.recorder_batch_size, timeout=self._settings.recorder_fetch_timeout
            )
            return msgs
        except TimeoutError:  # nothing to do (nats' TimeoutError is one too)
            return []
        except nats.errors.Error as exc:  # reconnecting, JetStream API hiccup
            log.warning("fetch failed (%s); retrying", exc)
            await self._sleep_unless_stopped(self._settings.recorder_retry_initial)
            return []

    async def _process(self, msgs: Sequence[Msg]) -> None:
        by_seq: dict[int, Msg] = {}
        decoded: list[Decoded] = []
        dead: list[DeadEvent] = []
        for msg in msgs:
            delivery = Delivery(msg.metadata.sequence.stream, msg.subject, msg.data)
            try:
                item = await decode(delivery, self._claims)
            except Retryable as exc:
                # Only this message waits; the projection does not care about order.
                log.warning("seq %d: %s; redelivering later", delivery.stream_seq, exc)
                await self._settle(msg.nak(delay=self._settings.recorder_retry_max))
                continue
            by_seq[delivery.stream_seq] = msg
            if isinstance(item, Decoded):
                decoded.append(item)
            else:
                dead.append(item)
        if not by_seq:
            return
        committed = await self._commit_with_retry(decoded, dead, list(by_seq.values()))
        if committed is None:
            return
        dead_seqs = {d.delivery.stream_seq for d in committed}
        for seq, msg in by_seq.items():
            await self._settle(msg.term() if seq in dead_seqs else msg.ack())
        self.applied_batches += 1
        self.acked += len(by_seq) - len(dead_seqs)
        self.dead += len(dead_seqs)
        metrics.RECORDER_EVENTS.labels("projected").inc(len(by_seq) - len(dead_seqs))
        if dead_seqs:
            metrics.RECORDER_EVENTS.labels("dead").inc(len(dead_seqs))
        log.debug("batch of %d committed (%d dead)", len(by_seq), len(dead_seqs))

    async def _commit_with_retry(
        self, decoded: list[Decoded], dead: list[DeadEvent], msgs: list[Msg]
    ) -> list[DeadEvent] | None:
        """Commit, retrying while the database is unreachable. ``None`` means we gave
        up because of shutdown: the messages were handed back to JetStream."""
        delay = self._settings.recorder_retry_initial
        while True:
            try:
                async with self._pool.acquire(
                    timeout=self._settings.recorder_db_acquire_timeout
                ) as conn:
                    with metrics.Timer(metrics.RECORDER_BATCH_SECONDS.observe):
                        return await commit(conn, decoded, dead)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if self._grace_expired():
                    log.warning(
                        "shutting down with the database unreachable; %d messages "
                        "go back to JetStream",
                        len(msgs),
                    )
                    for msg in msgs:
                        await self._settle(msg.nak())
                    return None
                log.warning(
                    "database unavailable (%r); retrying the batch of %d in %.1fs",
                    exc,
                    len(msgs),
                    delay,
                )
                # Keep JetStream from redelivering what we still hold (ack_wait).
                for msg in msgs:
                    await self._settle(msg.in_progress())
                await asyncio.sleep(delay)
                delay = self._next_delay(delay)

    def _grace_expired(self) -> bool:
        """Stopping, and the batch has been retried for the grace period since."""
        if not self.stopping:
            return False
        now = time.monotonic()
        if self._stop_time is None:
            self._stop_time = now
        return now - self._stop_time >= self._settings.recorder_shutdown_grace

    async def _settle(self, ack: Awaitable[None]) -> None:
        """Send an ack/nak/term/progress. If NATS is unreachable it is lost, which is
        harmless: the message is redelivered and the projection skips it."""
        try:
            await ack
        except (nats.errors.Error, OSError) as exc:
            log.warning("could not acknowledge (%s); it will be redelivered", exc)

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    def _next_delay(self, delay: float) -> float:
        return min(delay * 2, self._settings.recorder_retry_max)
