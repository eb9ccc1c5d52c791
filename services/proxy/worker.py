"""The proxy's NATS side: take calls, run each in its own task, cancel on request,
keep quiet calls alive, answer the model list, and stop gracefully.

Consumes (see :mod:`shared.chatwire`)::

    jetty.chat.request   queue group jetty-proxies   ChatCall + body → reply frames
    jetty.chat.cancel    every proxy                 trajectory id → cancel that call
    jetty.proxy.models   queue group jetty-proxies   → OpenAI GET /v1/models JSON
    jetty.proxy.resolve  queue group jetty-proxies   model name → {"provider", "model"}
                                                     or an ``e`` error frame (404)

nats-py awaits a subscription's callback before delivering its next message, so
the request callback only decodes and spawns; everything slow happens in the
call's task. Concurrency is bounded: past ``max_in_flight`` a call is answered
503 at once rather than queued behind work that may take minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from functools import partial

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from pydantic import ValidationError

from services.proxy.call import CLIENT_DISCONNECTED, PROXY_SHUTDOWN, CallDeps, CallRun
from services.proxy.embed_call import EmbedRun
from services.proxy.retry import RetryPolicy
from services.proxy.router import Router
from services.proxy.run_masks import RunMasks
from shared import subjects, tracing
from shared.bus import ClaimStore, EventPublisher
from shared.chatwire import KEEPALIVE_INTERVAL, BadFrame, Frame, decode_call, frame
from shared.errors import ApiError, InvalidRequest, Unavailable
from shared.key_usage import KeyUsageStore
from shared.runs import RunStates

log = logging.getLogger(__name__)

# After the grace period, cancelled calls get this long to record themselves.
_CANCEL_WAIT = 5.0


class Worker:
    def __init__(
        self,
        nc: NATS,
        publisher: EventPublisher,
        claims: ClaimStore,
        router: Router,
        *,
        max_in_flight: int = 1024,
        total_timeout: float = 600.0,
        keepalive_interval: float = KEEPALIVE_INTERVAL,
        requested_delay: float = 0.25,
        retry: RetryPolicy | None = None,
        runs: RunStates | None = None,
        key_usage: KeyUsageStore | None = None,
        run_masks: RunMasks | None = None,
    ) -> None:
        self._nc = nc
        self._router = router
        self._deps = CallDeps(
            nc=nc,
            publisher=publisher,
            claims=claims,
            router=router,
            total_timeout=total_timeout,
            requested_delay=requested_delay,
            retry=retry if retry is not None else RetryPolicy.none(),
            runs=runs,
            key_usage=key_usage,
            run_masks=run_masks,
        )
        self._max_in_flight = max_in_flight
        self._keepalive_interval = keepalive_interval
        # Keyed by trajectory id; a set because a trajectory may run several steps.
        self._calls: dict[str, set[CallRun]] = {}
        self._in_flight = 0
        self._work_subs: list[Subscription] = []
        self._cancel_sub: Subscription | None = None
        self._ticker: asyncio.Task[None] | None = None

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _runs(self) -> Iterator[CallRun]:
        for runs in list(self._calls.values()):
            yield from list(runs)

    async def start(self) -> None:
        for provider in self._router.providers:
            await provider.start()
        # Cancel first: a call must never be running without its cancel path.
        self._cancel_sub = await self._nc.subscribe(subjects.CHAT_CANCEL, cb=self._on_cancel)
        self._work_subs = [
            await self._nc.subscribe(
                subjects.CHAT_REQUEST, queue=subjects.PROXY_QUEUE, cb=self._on_request
            ),
            await self._nc.subscribe(
                subjects.MODELS_LIST, queue=subjects.PROXY_QUEUE, cb=self._on_models
            ),
            await self._nc.subscribe(
                subjects.MODEL_RESOLVE, queue=subjects.PROXY_QUEUE, cb=self._on_resolve
            ),
        ]
        await self._confirm_subscriptions()
        self._ticker = asyncio.create_task(self._keepalives(), name="proxy-keepalives")
        log.info("proxy taking calls (max %d in flight)", self._max_in_flight)

    async def _confirm_subscriptions(self) -> None:
        """Return once the server has registered our subscriptions, so "started" means
        the next call can reach us. ``nc.flush()`` does not prove it: nats-py writes its
        PING ahead of commands still buffered. A request to a subject subscribed last
        does, because a server applies one connection's commands in order."""
        probe = self._nc.new_inbox()

        async def echo(msg: Msg) -> None:
            await msg.respond(b"")

        sub = await self._nc.subscribe(probe, cb=echo)
        try:
            await self._nc.request(probe, b"", timeout=5)
        finally:
            await sub.unsubscribe()

    async def stop(self, grace: float) -> None:
        """Stop taking work, let in-flight calls finish for ``grace`` seconds, then
        cancel the rest (each records its cancellation and tells its client)."""
        for sub in self._work_subs:
            try:
                # drain, not unsubscribe: calls already delivered to us are still taken.
                await sub.drain()  # type: ignore[no-untyped-call]  # nats-py lacks the annotation
            except NatsError as exc:
                log.warning("unsubscribe failed: %r", exc)
        self._work_subs = []
        tasks = {run.task for run in self._runs() if run.task is not None}
        if tasks:
            log.info("waiting up to %.0fs for %d in-flight calls", grace, len(tasks))
            _, pending = await asyncio.wait(tasks, timeout=grace)
            if pending:
                log.warning("cancelling %d calls still running after %.0fs", len(pending), grace)
                for run in self._runs():
                    run.cancel(PROXY_SHUTDOWN)
                await asyncio.wait(pending, timeout=_CANCEL_WAIT)
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        if self._cancel_sub is not None:
            try:
                await self._cancel_sub.unsubscribe()
            except NatsError as exc:
                log.warning("unsubscribe failed: %r", exc)
            self._cancel_sub = None
        for provider in self._router.providers:
            await provider.aclose()

    # --- subscriptions ----------------------------------------------------------------

    async def _reject(self, reply: str, error: ApiError) -> None:
        try:
            await self._nc.publish(reply, frame(Frame.ERROR, orjson.dumps(error.to_dict())))
        except NatsError as exc:
            log.warning("could not answer a rejected call: %r", exc)

    async def _on_request(self, msg: Msg) -> None:
        if not msg.reply:
            log.warning("chat call without a reply inbox dropped")
            return
        if self._in_flight >= self._max_in_flight:
            # Not taken, so not recorded: like the gateway's own 503s, no proxy ran it.
            await self._reject(
                msg.reply,
                Unavailable(
                    "The model proxy is at capacity; please retry shortly.",
                    code="proxy_overloaded",
                    retry_after=1,
                ),
            )
            return
        try:
            call, body = decode_call(msg.data)
        except (BadFrame, ValidationError) as exc:
            log.warning("malformed chat call: %s", exc)
            await self._reject(msg.reply, InvalidRequest(f"Malformed call from the gateway: {exc}"))
            return
        runner = EmbedRun if call.kind == "embedding" else CallRun
        run = runner(self._deps, call, body, msg.reply)
        if msg.headers:
            run.trace_parent = tracing.extract(msg.headers)
        task = asyncio.create_task(run.run(), name=f"call-{call.trajectory_id}")
        run.task = task
        self._in_flight += 1
        self._calls.setdefault(call.trajectory_id, set()).add(run)
        task.add_done_callback(partial(self._finished, run))

    def _finished(self, run: CallRun, task: asyncio.Task[None]) -> None:
        self._in_flight -= 1
        runs = self._calls.get(run.call.trajectory_id)
        if runs is not None:
            runs.discard(run)
            if not runs:
                del self._calls[run.call.trajectory_id]
        if task.cancelled():
            log.info("call %s cancelled before it could finish", run.call.trajectory_id)
            return
        exc = task.exception()
        if exc is not None:
            log.error("call %s crashed", run.call.trajectory_id, exc_info=exc)

    async def _on_cancel(self, msg: Msg) -> None:
        trajectory_id = msg.data.decode("utf-8", "replace").strip()
        for run in list(self._calls.get(trajectory_id, ())):
            if run.cancel(CLIENT_DISCONNECTED):
                log.info("call %s cancelled: client disconnected", trajectory_id)

    async def _on_models(self, msg: Msg) -> None:
        if not msg.reply:
            return
        try:
            await self._nc.publish(msg.reply, self._router.models_json())
        except NatsError as exc:
            log.warning("could not answer the model list: %r", exc)

    async def _on_resolve(self, msg: Msg) -> None:
        """Whether a model name routes to a configured provider (the gateway checks a
        runbook's model before queueing it)."""
        if not msg.reply:
            return
        try:
            route = self._router.plan(msg.data.decode(errors="replace"))[0]
            answer = frame(
                Frame.RESPONSE,
                orjson.dumps({"provider": route.provider.name, "model": route.upstream_model}),
            )
        except ApiError as exc:
            answer = frame(Frame.ERROR, orjson.dumps(exc.to_dict()))
        try:
            await self._nc.publish(msg.reply, answer)
        except NatsError as exc:
            log.warning("could not answer a model lookup: %r", exc)

    async def _keepalives(self) -> None:
        """One ticker for all calls (cheaper than a timer per call): a call silent for
        ``keepalive_interval`` gets a ``k`` frame so the gateway knows it is alive."""
        interval = self._keepalive_interval
        tick = min(1.0, interval / 4)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for run in self._runs():
                if run.closed or now - run.last_sent < interval:
                    continue
                try:
                    await run.keepalive()
                except ApiError as exc:
                    log.debug("keep-alive for %s not sent: %s", run.call.trajectory_id, exc)
