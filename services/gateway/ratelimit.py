"""Requests-per-minute limits shared by every gateway replica.

Windows are calendar minutes (epoch seconds // 60). Each replica counts the
requests it admitted per key in memory, and publishes its count to the KV bucket
``jetty_key_rates`` under ``<key id>.<replica>`` as soon as it changes (writes
coalesce: one in flight per replica at a time). Every replica watches the bucket,
so a check is ``own count + the others' counts < limit`` — memory only, no round
trip on the request path. Two replicas can each admit a request in the same few
milliseconds before seeing the other's count; the overshoot is bounded by the
number of requests admitted during one KV write (documented in docs/operations.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
from nats.js import JetStreamContext

from shared.key_usage import ensure_key_rates_bucket

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    #: seconds until the window resets
    reset: float


class RateLimiter:
    def __init__(self, js: JetStreamContext, replica: str) -> None:
        self._js = js
        # A subject token may not hold dots; the replica name is host-pid.
        self._replica = replica.replace(".", "_").replace("/", "_")
        self._kv: Any = None
        self._own: dict[str, tuple[int, int]] = {}  # key id -> (minute, count)
        # key id -> replica -> (minute, count), from the watch (others only)
        self._others: dict[str, dict[str, tuple[int, int]]] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._ready = asyncio.Event()

    async def start(self) -> None:
        self._kv = await ensure_key_rates_bucket(self._js)
        self._tasks = [
            asyncio.create_task(self._watch()),
            asyncio.create_task(self._flush_loop()),
        ]
        await asyncio.wait_for(self._ready.wait(), timeout=10)

    def check(self, key_id: str, limit: int, now: float | None = None) -> Decision:
        """Admit one request of ``key_id`` if the shared count is under ``limit``."""
        now = time.time() if now is None else now
        minute = int(now) // 60
        reset = (minute + 1) * 60 - now
        own_minute, own = self._own.get(key_id, (minute, 0))
        if own_minute != minute:
            own = 0
        others = sum(n for m, n in self._others.get(key_id, {}).values() if m == minute)
        used = own + others
        if used >= limit:
            return Decision(False, limit, 0, reset)
        self._own[key_id] = (minute, own + 1)
        self._dirty.add(key_id)
        self._wake.set()
        return Decision(True, limit, max(0, limit - used - 1), reset)

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            for key_id in dirty:
                minute, count = self._own[key_id]
                value = orjson.dumps({"m": minute, "n": count})
                try:
                    await self._kv.put(f"{key_id}.{self._replica}", value)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # counted locally all the same; retried
                    log.warning("rate count of %s not shared: %r", key_id, exc)
                    self._dirty.add(key_id)
                    await asyncio.sleep(0.5)
                    self._wake.set()

    async def _watch(self) -> None:
        while True:
            try:
                watcher = await self._kv.watchall()
                async for entry in watcher:
                    if entry is None:
                        self._ready.set()
                        continue
                    key_id, _, replica = entry.key.rpartition(".")
                    if replica == self._replica or not key_id:
                        continue
                    if entry.operation in ("DEL", "PURGE") or not entry.value:
                        self._others.get(key_id, {}).pop(replica, None)
                        continue
                    raw = orjson.loads(entry.value)
                    self._others.setdefault(key_id, {})[replica] = (int(raw["m"]), int(raw["n"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("rate watch interrupted (%s); resuming", exc)
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
