"""``python -m services.webhooks``: wiring only (settings, logging, connections,
signals); the work is in :mod:`services.webhooks.delivery`.

Waits for NATS rather than failing; with ``JETTY_HEALTH_PORT`` set it serves
``/healthz``, ``/readyz`` (ready = connected to NATS) and ``/metrics`` from the
start, so a pod waiting for NATS is alive but not ready. SIGTERM / SIGINT: stop
fetching (or stop waiting for NATS), finish the deliveries in hand (their events
are acked or NAKed), drain NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import aiohttp
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import FetchTimeoutError

from services.webhooks.delivery import Deliverer
from services.webhooks.endpoints import ConsumerControl, Endpoints, keep_consumer
from services.webhooks.settings import WebhookSettings
from shared import subjects
from shared.bus import connect_until_up, ensure_streams, source_name
from shared.health import HealthServer, start_health_server
from shared.logs import setup_logging
from shared.metrics import metrics_route
from shared.webhooks import WebhookStore

log = logging.getLogger("services.webhooks")


async def serve(settings: WebhookSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    connected: list[Client] = []
    health: HealthServer | None = None
    if settings.health_port is not None:
        health = await start_health_server(
            settings.health_host,
            settings.health_port,
            {"nats": lambda: bool(connected) and connected[0].is_connected},
            routes=[metrics_route()],
        )
    try:
        await _consume(settings, stop, connected)
    finally:
        if health is not None:
            await health.stop()


async def _consume(settings: WebhookSettings, stop: asyncio.Event, connected: list[Client]) -> None:
    # A SIGTERM while NATS is still awaited ends the service at once.
    connecting = asyncio.create_task(connect_until_up(settings.nats_url, source_name("webhooks")))
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({connecting, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not connecting.done():
        connecting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await connecting
        log.info("webhook delivery stopped before NATS answered")
        return
    nc = connecting.result()
    connected.append(nc)
    js = nc.jetstream()
    await ensure_streams(js, settings.stream_replicas)
    store = WebhookStore(js)
    endpoints = Endpoints(store)
    control = ConsumerControl(js, settings)
    # The first reconcile runs once the watch has the current endpoints; until
    # then (and while there is none) there is nothing to fetch.
    watching = asyncio.create_task(endpoints.run())
    keeping = asyncio.create_task(keep_consumer(endpoints, control, stop))
    log.info("webhook delivery consuming %s", settings.nats_url.split("@")[-1])
    in_flight: set[asyncio.Task[None]] = set()
    sub: JetStreamContext.PullSubscription | None = None
    async with aiohttp.ClientSession() as session:
        deliverer = Deliverer(settings, store, session, endpoints.of_collection)
        while not stop.is_set():
            if not control.filters:
                # No endpoint wants anything: no consumer, nothing to fetch.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.2)
                continue
            try:
                if sub is None:
                    sub = await js.pull_subscribe_bind(
                        subjects.WEBHOOKS_DURABLE, subjects.EVENTS_STREAM
                    )
                messages = await sub.fetch(batch=50, timeout=1.0)
            except (FetchTimeoutError, TimeoutError):
                continue
            except Exception as exc:  # the consumer went away (no endpoints), NATS away
                if control.filters:
                    log.warning("fetch failed: %r", exc)
                await asyncio.sleep(1.0)
                continue
            for msg in messages:
                task = asyncio.create_task(deliverer.handle(msg))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                task.add_done_callback(_log_failure)
        if in_flight:
            await asyncio.wait(in_flight, timeout=settings.webhook_timeout + 5)
    keeping.cancel()
    watching.cancel()
    # Every ack went out with its event's handling; a pull subscription's drain
    # can wait for ever, so: flush what is written, then close.
    with contextlib.suppress(Exception):
        if sub is not None:
            await sub.unsubscribe()
        await asyncio.wait_for(nc.flush(), 5.0)
    with contextlib.suppress(Exception):
        await nc.close()
    log.info("webhook delivery stopped")


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        # Not acked: the stream redelivers the event after ack_wait.
        log.warning("delivery failed: %r", task.exception())


def main() -> None:
    settings = WebhookSettings()
    # Text or JSON lines (JETTY_LOG_FORMAT), with the service's name, like the others.
    setup_logging("webhooks", settings.log_level)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
