"""A small HTTP port for the services that have no HTTP API of their own
(proxy, recorder, runner, webhooks): ``GET /healthz`` and ``GET /readyz``.

* ``/healthz`` (liveness) answers 200 while the event loop runs: a process that
  cannot answer it is stuck and should be restarted.
* ``/readyz`` (readiness) answers 200 only when every named check passes, e.g.
  "connected to NATS", "PostgreSQL answers"; otherwise 503 with the failing
  names. A check is a plain or async callable returning ``bool``; one that
  raises or takes longer than ``check_timeout`` counts as failed.

Both answer JSON (``{"status": "ok"|"unavailable", "checks": {...}}``).
``routes`` lets a caller add more handlers to the same port (a ``/metrics``
endpoint, say) without changing this module.

Public API: :func:`start_health_server`, which returns a :class:`HealthServer`
whose ``stop()`` closes the port.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from aiohttp import web

Check = Callable[[], bool | Awaitable[bool]]


async def _passes(check: Check, timeout: float) -> bool:
    try:
        result = check()
        if inspect.isawaitable(result):
            result = await asyncio.wait_for(result, timeout)
        return bool(result)
    except Exception:
        return False


@dataclass(slots=True)
class HealthServer:
    runner: web.AppRunner
    port: int

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_health_server(
    host: str,
    port: int,
    ready: Mapping[str, Check],
    *,
    routes: Iterable[web.RouteDef] = (),
    check_timeout: float = 2.0,
) -> HealthServer:
    """Serve ``/healthz`` and ``/readyz`` (plus ``routes``) on ``host:port``;
    ``port`` 0 picks a free one (see ``HealthServer.port``)."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        names = list(ready)
        results = await asyncio.gather(*(_passes(ready[n], check_timeout) for n in names))
        checks = {n: ("ok" if ok else "failing") for n, ok in zip(names, results, strict=True)}
        ok = all(results)
        return web.json_response(
            {"status": "ok" if ok else "unavailable", "checks": checks},
            status=200 if ok else 503,
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.add_routes(list(routes))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return HealthServer(runner, int(runner.addresses[0][1]))
