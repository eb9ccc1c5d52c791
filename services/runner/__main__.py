"""``python -m services.runner``: wiring only (settings, bus, sandbox backend,
agent adapters, the work-queue worker, signals)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from services.runner.backends import build_backend
from services.runner.registry import build_adapters
from services.runner.run import RunDeps
from services.runner.settings import RunnerSettings
from services.runner.worker import RunnerWorker
from shared.bus import EventPublisher, connect, ensure_streams, source_name
from shared.health import start_health_server
from shared.logs import setup_logging, use_uvloop
from shared.runs import RunStates
from shared.secrets import RunSecrets, SecretBox
from shared.tokens import TokenStore

log = logging.getLogger("services.runner")

# On SIGTERM, runs in flight get this long to end by themselves before their
# sandboxes are killed (they then end as cancelled).
SHUTDOWN_GRACE = 10.0


async def main(settings: RunnerSettings) -> None:
    name = source_name("runner")
    nc = await connect(settings.nats_url, name)
    js = nc.jetstream()
    await ensure_streams(js, settings.stream_replicas)
    publisher = EventPublisher(nc, js, name, settings.claim_threshold_bytes)
    backend = build_backend(settings)
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
    health = None
    if settings.health_port is not None:
        health = await start_health_server(
            settings.health_host, settings.health_port, {"nats": lambda: nc.is_connected}
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
    if health is not None:
        await health.stop()
    await backend.close()
    await publisher.flush()
    await nc.drain()
    log.info("runner stopped")


def run() -> None:
    settings = RunnerSettings()
    setup_logging("runner", settings.log_level)
    use_uvloop()
    asyncio.run(main(settings))


if __name__ == "__main__":
    run()
