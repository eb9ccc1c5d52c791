"""``python -m services.recorder``: wiring only (settings, logging, event loop,
connections, signals). The work is in :mod:`services.recorder.consumer`.

Start-up waits for Postgres and NATS rather than failing, so the recorder can come
up before them. SIGTERM / SIGINT: stop fetching, finish (commit and ack) the batch
in hand, drain NATS, close the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg
import nats.errors
from nats.aio.client import Client as NATS

from services.recorder import projection
from services.recorder.consumer import Recorder
from services.recorder.settings import RecorderSettings
from shared.bus import connect, ensure_streams, source_name
from shared.db.pool import apply_migrations, create_pool, is_transient
from shared.health import HealthServer, start_health_server

log = logging.getLogger("services.recorder")

T = TypeVar("T")


async def _until_ready(
    what: str, attempt: Callable[[], Awaitable[T]], stop: asyncio.Event, settings: RecorderSettings
) -> T | None:
    """Retry ``attempt`` with backoff while the dependency is unreachable; ``None``
    if asked to stop first."""
    delay = settings.recorder_retry_initial
    while not stop.is_set():
        try:
            return await attempt()
        except Exception as exc:
            if not is_transient(exc) and not _is_nats_down(exc):
                raise
            log.warning("%s not reachable yet (%r); retrying in %.1fs", what, exc, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, settings.recorder_retry_max)
    return None


@dataclass(slots=True)
class _Connections:
    """What readiness looks at: set once connected, cleared on the way out."""

    pool: asyncpg.Pool | None = None
    nc: NATS | None = None


def _is_nats_down(exc: BaseException) -> bool:
    return isinstance(exc, nats.errors.Error)


async def serve(settings: RecorderSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def migrate() -> bool:
        await apply_migrations(
            settings.database_url, connect_timeout=settings.recorder_db_connect_timeout
        )
        return True

    connected = _Connections()

    async def db_answers() -> bool:
        pool = connected.pool
        return pool is not None and await pool.fetchval("select 1") == 1

    def nats_connected() -> bool:
        return connected.nc is not None and connected.nc.is_connected

    health: HealthServer | None = None
    if settings.health_port is not None:
        health = await start_health_server(
            settings.health_host,
            settings.health_port,
            {"postgresql": db_answers, "nats": nats_connected},
        )
    try:
        await _serve(settings, stop, migrate, connected)
    finally:
        if health is not None:
            await health.stop()


async def _serve(
    settings: RecorderSettings,
    stop: asyncio.Event,
    migrate: Callable[[], Awaitable[bool]],
    connected: _Connections,
) -> None:
    if await _until_ready("PostgreSQL", migrate, stop, settings) is None:
        return
    pool = await create_pool(
        settings.database_url,
        max_size=settings.recorder_db_pool_size,
        connect_timeout=settings.recorder_db_connect_timeout,
        command_timeout=settings.recorder_db_command_timeout,
        application_name="jetty-recorder",
        server_settings=projection.SERVER_SETTINGS,
    )
    connected.pool = pool
    try:

        async def nats_connect() -> NATS:
            return await connect(settings.nats_url, name=source_name("recorder"))

        nc = await _until_ready("NATS", nats_connect, stop, settings)
        if nc is None:
            return
        connected.nc = nc
        try:
            js = nc.jetstream(timeout=settings.recorder_nats_timeout)

            async def streams() -> bool:
                await ensure_streams(js, settings.stream_replicas)
                return True

            if await _until_ready("JetStream", streams, stop, settings) is None:
                return
            log.info("recorder consuming %s", settings.nats_url.split("@")[-1])
            await Recorder(js, pool, settings, stop_event=stop).run()
        finally:
            # Pending acks go out before the connection closes.
            await nc.drain()
    finally:
        connected.pool = connected.nc = None
        await asyncio.wait_for(pool.close(), timeout=settings.recorder_db_connect_timeout * 2)
    log.info("recorder stopped")


def main() -> None:
    settings = RecorderSettings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        import uvloop
    except ImportError:  # not on every platform; the default loop works too
        asyncio.run(serve(settings))
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(settings))


if __name__ == "__main__":
    main()
