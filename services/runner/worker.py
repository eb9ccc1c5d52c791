"""The runner's work queue: a durable pull consumer on the events stream that sees
only ``runbook.requested`` events, shared by every runner instance.

Consumes::

    jetty.events.*.runbook.requested   durable jetty-runner   one run per message
    jetty.runbook.cancel               every runner           trajectory id → stop it

A runner pulls a message only when it has a free slot (bounded concurrency), and
acknowledges it when the run has ended. While a run goes on, the message is kept
alive with "in progress" heartbeats; if the runner dies they stop, and after
``ack_wait`` JetStream hands the message to another runner (or this one
restarted), which finds the run ``running`` in its live state and fails it with
``runner_lost``. A queued message survives any restart: it is only acknowledged
once its run has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from services.runner.run import Run, RunDeps
from shared import metrics, subjects
from shared.bus import ClaimStore, event_data
from shared.events.registry import RunbookRequestedEnvelope, decode_envelope
from shared.events.runbook import RunbookRequested

log = logging.getLogger(__name__)


def runner_consumer_config(ack_wait: float, concurrency: int) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=subjects.RUNNER_DURABLE,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_deliver=-1,
        max_ack_pending=max(64, concurrency * 4),
        filter_subject=subjects.RUNBOOK_REQUESTED_ALL,
    )


class RunnerWorker:
    def __init__(self, nc: NATS, js: JetStreamContext, deps: RunDeps) -> None:
        self._nc = nc
        self._js = js
        self._deps = deps
        self._concurrency = deps.settings.runner_concurrency
        self._slots = asyncio.Semaphore(self._concurrency)
        self._runs: dict[str, Run] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._cancel_sub: Subscription | None = None
        self._stopping = asyncio.Event()
        self._claims = ClaimStore(js)
        metrics.RUNBOOK_ACTIVE.set_function(lambda: len(self._runs))

    async def run(self) -> None:
        """Take runs until :meth:`stop`; returns once in-flight runs have ended."""
        self._cancel_sub = await self._nc.subscribe(subjects.RUNBOOK_CANCEL, cb=self._on_cancel)
        sub = await self._js.pull_subscribe(
            subjects.RUNBOOK_REQUESTED_ALL,
            durable=subjects.RUNNER_DURABLE,
            stream=subjects.EVENTS_STREAM,
            config=runner_consumer_config(self._deps.settings.runner_ack_wait, self._concurrency),
        )
        log.info("runner taking runs (%d at once)", self._concurrency)
        while not self._stopping.is_set():
            await self._slots.acquire()
            if self._stopping.is_set():
                self._slots.release()
                break
            try:
                msgs = await sub.fetch(1, timeout=2.0)
            except (NatsTimeoutError, TimeoutError):
                self._slots.release()
                continue
            except NatsError as exc:
                self._slots.release()
                log.warning("work queue fetch failed: %r", exc)
                await asyncio.sleep(1.0)
                continue
            for msg in msgs:
                task = asyncio.create_task(self._handle(msg))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        with contextlib.suppress(NatsError):
            await sub.unsubscribe()

    def stop(self) -> None:
        """Take no new run; runs in flight go on to their end (their sandboxes are
        killed by :meth:`kill_all` when the process must go now)."""
        self._stopping.set()
        self._slots.release()

    async def kill_all(self) -> None:
        for run in list(self._runs.values()):
            run.request_stop("cancel")

    async def _on_cancel(self, msg: Msg) -> None:
        run = self._runs.get(msg.data.decode(errors="replace"))
        if run is not None:
            run.request_stop("cancel")

    async def _handle(self, msg: Msg) -> None:
        heartbeat: asyncio.Task[None] | None = None
        try:
            try:
                envelope = decode_envelope(msg.data)
            except ValidationError as exc:
                log.error("unreadable runbook request dropped: %s", exc)
                await msg.term()
                return
            if not isinstance(envelope, RunbookRequestedEnvelope):
                log.error("not a runbook request: %s", envelope.type)
                await msg.term()
                return
            try:
                # A long runbook travels by claim check.
                request = await event_data(envelope, self._claims)
            except (ValueError, ValidationError, NotFoundError) as exc:
                log.error("runbook request %s unreadable: %s", envelope.id, exc)
                await msg.term()
                return
            assert isinstance(request, RunbookRequested)
            heartbeat = asyncio.create_task(self._heartbeat(msg))
            run = Run(self._deps, envelope.trajectory_id, envelope.collection, request)
            self._runs[envelope.trajectory_id] = run
            try:
                await run.execute()
            finally:
                self._runs.pop(envelope.trajectory_id, None)
            await msg.ack()
        except Exception:
            log.exception("run message not handled; it will be redelivered")
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
            self._slots.release()

    async def _heartbeat(self, msg: Msg) -> None:
        interval = max(0.5, self._deps.settings.runner_ack_wait / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                await msg.in_progress()
            except NatsError as exc:
                log.warning("heartbeat of a run failed: %r", exc)
