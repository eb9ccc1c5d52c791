"""``python -m services.proxy``: wiring only (settings, bus, providers, worker, signals)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import signal

from services.proxy.providers import build_providers
from services.proxy.retry import RetryPolicy
from services.proxy.router import Router
from services.proxy.routes import RoutesError, load_routes
from services.proxy.run_masks import RunMasks
from services.proxy.settings import ProxySettings
from services.proxy.worker import Worker
from shared.bus import ClaimStore, EventPublisher, connect, ensure_streams, source_name
from shared.health import start_health_server
from shared.key_usage import KeyUsageStore
from shared.logs import setup_logging, use_uvloop
from shared.metrics import metrics_route
from shared.runs import RunStates
from shared.secrets import RunSecrets, SecretBox
from shared.tracing import setup_tracing, shutdown_tracing

log = logging.getLogger("services.proxy")


def build_router(settings: ProxySettings) -> Router:
    """Providers from the environment, aliases from ``JETTY_ROUTES_FILE``; raises
    :class:`~services.proxy.routes.RoutesError` on a bad routes file."""
    aliases = load_routes(settings.routes_file) if settings.routes_file else {}
    return Router(
        build_providers(settings, os.environ),
        aliases=aliases,
        rng=random.Random(settings.routes_seed),
    )


async def main(settings: ProxySettings) -> None:
    # Checked before connecting anywhere: a bad routes file stops the start.
    router = build_router(settings)
    nc = await connect(settings.nats_url, name=source_name("proxy"))
    js = nc.jetstream()
    await ensure_streams(js, settings.stream_replicas, settings.retention_days)
    publisher = EventPublisher(nc, js, source_name("proxy"), settings.claim_threshold_bytes)
    key_usage = KeyUsageStore(js)
    worker = Worker(
        nc,
        publisher,
        ClaimStore(js),
        router,
        runs=RunStates(js),
        key_usage=key_usage,
        run_masks=RunMasks(RunSecrets(js, SecretBox.from_setting(settings.secrets_key)), publisher)
        if settings.secrets_key
        else None,
        max_in_flight=settings.proxy_max_in_flight,
        total_timeout=settings.upstream_total_timeout,
        requested_delay=settings.proxy_requested_delay,
        retry=RetryPolicy(
            max_retries=settings.retry_max_attempts,
            base_delay=settings.retry_base_delay,
            max_delay=settings.retry_max_delay,
            rng=random.Random(settings.routes_seed),
        ),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Everything loaded so far (provider catalogue, pricing table, pydantic schemas)
    # lives for the whole process: out of the collector's sight, so that the full
    # collections the per-call garbage triggers do not walk it again and again; and
    # a first generation collected every 20,000 allocations, not 700 (a call makes
    # hundreds). docs/architecture.md, "The proxy's hot path".
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    await worker.start()
    health = None
    if settings.health_port is not None:
        health = await start_health_server(
            settings.health_host,
            settings.health_port,
            {"nats": lambda: nc.is_connected},
            routes=[metrics_route()],
        )
    log.info(
        "proxy ready; models: %s",
        ", ".join(card.id for card in router.model_cards()),
    )
    try:
        await stop.wait()
    finally:
        log.info("stopping: finishing in-flight calls")
        if health is not None:
            await health.stop()
        await worker.stop(settings.proxy_shutdown_grace)
        await publisher.flush()
        await key_usage.close()
        await nc.drain()
        log.info("proxy stopped")


def run() -> None:
    settings = ProxySettings()
    setup_logging("proxy", settings.log_level)
    setup_tracing("proxy")
    use_uvloop()
    try:
        asyncio.run(main(settings))
    except RoutesError as exc:
        log.error("cannot start: %s", exc)
        raise SystemExit(2) from None
    finally:
        shutdown_tracing()


if __name__ == "__main__":
    run()
