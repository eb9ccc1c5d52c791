"""``python -m services.runner``: wiring only (settings, bus, sandbox backend,
agent adapters, the work-queue worker, signals)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal

from services.runner.backends import build_backend
from services.runner.registry import build_adapters
from services.runner.run import RunDeps
from services.runner.settings import RunnerSettings
from services.runner.worker import RunnerWorker
from shared import metrics, subjects
from shared.bus import EventPublisher, connect, ensure_streams, source_name
from shared.health import start_health_server
from shared.logs import setup_logging, use_uvloop
from shared.metrics import metrics_route
from shared.objectstore import ObjectStore
from shared.runs import RunStates
from shared.secrets import RunSecrets, SecretBox
from shared.tokens import TokenStore
from shared.tracing import setup_tracing, shutdown_tracing

log = logging.getLogger("services.runner")

# On SIGTERM, runs in flight get this long to end by themselves before their
# sandboxes are killed (they then end as cancelled).
SHUTDOWN_GRACE = 10.0


def _raise_open_file_limit() -> None:
    """The runner's own descriptors (two per relayed connection) up to the hard
    limit: a sandbox's flood is held by its relay's bound, and this leaves room."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def main(settings: RunnerSettings) -> None:
    _raise_open_file_limit()
    name = source_name("runner")
    nc = await connect(settings.nats_url, name)
    js = nc.jetstream()
    await ensure_streams(js, settings.stream_replicas, settings.retention_days)
    publisher = EventPublisher(nc, js, name, settings.claim_threshold_bytes)
    # Every resource a run needs exists before the first run is taken: the first
    # run on a fresh stack must not lose its artifacts to a missing bucket.
    store = ObjectStore.from_settings(settings)
    await store.ensure_bucket_retrying(log)
    backend = build_backend(settings, store)
    await backend.open()
    deps = RunDeps(
        settings=settings,
        runner=name,
        publisher=publisher,
        runs=RunStates(js),
        tokens=TokenStore(js),
        backend=backend,
        adapters=build_adapters(),
        secrets=RunSecrets(js, SecretBox.from_setting(settings.secrets_key))
        if settings.secrets_key
        else None,
    )
    worker = RunnerWorker(nc, js, deps)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    work = asyncio.create_task(worker.run(), name="runner-worker")
    queue = asyncio.create_task(
        metrics.track_consumer_backlog(
            js, subjects.EVENTS_STREAM, subjects.RUNNER_DURABLE, metrics.RUNBOOK_QUEUE
        )
    )
    health = None
    if settings.health_port is not None:
        health = await start_health_server(
            settings.health_host,
            settings.health_port,
            {"nats": lambda: nc.is_connected},
            routes=[metrics_route()],
        )
    log.info("runner ready (backend %s)", backend.name)
    stop_wait = asyncio.create_task(stopping.wait())
    await asyncio.wait({work, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    log.info("stopping: no new runs")
    worker.stop()
    try:
        await asyncio.wait_for(asyncio.shield(work), SHUTDOWN_GRACE)
    except TimeoutError:
        await worker.kill_all()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(work, SHUTDOWN_GRACE)
    stop_wait.cancel()
    queue.cancel()
    if health is not None:
        await health.stop()
    await backend.close()
    await publisher.flush()
    await nc.drain()
    log.info("runner stopped")


def run() -> None:
    settings = RunnerSettings()
    setup_logging("runner", settings.log_level)
    setup_tracing("runner")
    use_uvloop()
    try:
        asyncio.run(main(settings))
    finally:
        shutdown_tracing()


if __name__ == "__main__":
    run()
