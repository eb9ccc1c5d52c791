"""The firing loop every gateway replica runs (``JETTY_ROUTINES_ENABLED``).

It mirrors the routines bucket with one key-value watch (so a tick costs no round
trip to NATS unless something is due) and each tick (``JETTY_ROUTINES_TICK``
seconds), for each scheduled time since a routine's last fired one, tries to claim
the firing in ``jetty_routine_fires``: the replica whose create succeeds fires it,
the others see the claim and wait. A claim left unfinished for
``JETTY_ROUTINES_CLAIM_TIMEOUT`` seconds (its replica died mid-firing) is taken
over and fired with the same trajectory id. Scheduled times missed while no
replica ran are fired when one comes back, the latest ``MAX_CATCH_UP`` of them.
The schedule is the data on the bus; no replica holds state of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator

from aiohttp import web
from nats.errors import Error as NatsError

from services.gateway.routines.cadence import InvalidCadence, parse
from services.gateway.routines.firing import fire
from services.gateway.routines.store import Fire, Routine, RoutineStore
from services.gateway.state import GATEWAY, Gateway
from shared.errors import ApiError

log = logging.getLogger(__name__)

MAX_CATCH_UP = 10


def store_of(gw: Gateway) -> RoutineStore:
    found = gw.extensions.get("routines")
    if not isinstance(found, RoutineStore):
        found = gw.extensions["routines"] = RoutineStore(gw.js)
    return found


class RoutineScheduler:
    def __init__(self, gw: Gateway, replica: str) -> None:
        self.gw = gw
        self.replica = replica
        self.store = store_of(gw)
        #: the bucket's routines by key, kept current by :meth:`_mirror`
        self.routines: dict[str, Routine] = {}
        self._ready = asyncio.Event()

    async def run(self) -> None:
        mirror = asyncio.create_task(self._mirror(), name="routines-mirror")
        try:
            await self._ready.wait()
            while True:
                try:
                    await self.tick(time.time())
                except (NatsError, TimeoutError) as exc:
                    log.warning("routines tick failed: %r", exc)
                except Exception:
                    log.exception("routines tick failed")
                await asyncio.sleep(self.gw.settings.routines_tick)
        finally:
            mirror.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await mirror

    async def _mirror(self) -> None:
        while True:
            try:
                kv = await self.store.routines_kv()
                watcher = await kv.watchall()
                async for entry in watcher:
                    if entry is None:  # the end of the current values
                        self._ready.set()
                        continue
                    if entry.operation in ("DEL", "PURGE") or not entry.value:
                        self.routines.pop(entry.key, None)
                    else:
                        self.routines[entry.key] = Routine.model_validate_json(entry.value)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("routines watch interrupted (%r); resuming", exc)
                await asyncio.sleep(1.0)

    async def tick(self, now: float) -> int:
        """Fire what is due at ``now``; how many firings this replica made. A routine
        the mirror shows a little late is harmless: its claims say what was fired."""
        fired = 0
        for routine in list(self.routines.values()):
            if routine.paused:
                continue
            try:
                cadence = parse(routine.cadence, 0)
            except InvalidCadence:
                continue
            since = routine.last_slot if routine.last_slot is not None else routine.created_at
            for slot in cadence.due(since, now, routine.created_at, MAX_CATCH_UP):
                fired += await self._fire_slot(routine, slot, now)
        return fired

    async def _fire_slot(self, routine: Routine, slot: float, now: float) -> int:
        key = self.store.fire_key(routine.id, slot)
        claim = Fire(state="claimed", by=self.replica, at=now)
        stale = self.gw.settings.routines_claim_timeout
        if not await self.store.claim(key, claim, stale, now):
            settled = await self.store.fire_state(key)
            if settled is not None and settled.state != "claimed":
                await self._advance(routine, slot, settled)
            return 0
        try:
            trajectory_id = await fire(self.gw, routine, slot)
            result = Fire(state="fired", by=self.replica, at=time.time(),
                          trajectory_id=trajectory_id)  # fmt: skip
        except ApiError as exc:
            if exc.status >= 500:
                raise  # the bus or a store: leave the claim; retried once stale
            log.warning("routine %s could not fire: %s", routine.id, exc.message)
            result = Fire(state="failed", by=self.replica, at=time.time(), error=exc.message)
        await self.store.settle(key, result)
        await self._advance(routine, slot, result)
        return 1 if result.state == "fired" else 0

    async def _advance(self, routine: Routine, slot: float, result: Fire) -> None:
        def change(current: Routine) -> Routine:
            if current.last_slot is not None and current.last_slot >= slot:
                return current
            return current.model_copy(
                update={
                    "last_slot": slot,
                    "last_trajectory_id": result.trajectory_id or current.last_trajectory_id,
                    "last_error": result.error,
                }
            )

        await self.store.update(routine.collection, routine.id, change)


async def lifecycle(app: web.Application) -> AsyncIterator[None]:
    """Runs the firing loop beside the gateway (after its clients exist)."""
    gw = app[GATEWAY]
    task = None
    if gw.settings.routines_enabled:
        replica = f"{socket.gethostname()}-{os.getpid()}"
        task = asyncio.create_task(RoutineScheduler(gw, replica).run(), name="routines")
    yield
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
