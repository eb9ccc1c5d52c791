"""What each key has used, in the KV bucket ``jetty_key_usage`` (one entry per key
id, :class:`~shared.keys.KeyUsage`).

The proxy adds each recorded call's exact cost and tokens by compare-and-set, right
after it published the call's end event (the event is the record; this entry only
feeds the gateway's next budget and token-rate check). Every gateway mirrors the
bucket in memory with a watch, so a check reads no bucket and no database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.errors import NotFoundError as JsNotFoundError

from shared import subjects
from shared.keys import KeyUsage

log = logging.getLogger(__name__)

_MAX_CAS_RETRIES = 50
# Entries of keys unused for this long go (a budget "total" outlives it only for
# keys nobody calls; their spend is also in the projection).
USAGE_TTL = 400 * 24 * 3600.0
# Per-replica request counts only matter for the current minute.
RATES_TTL = 180.0
# How long the proxy gathers the usage of keys without a budget or token limit
# before adding it (one compare-and-set per key per interval).
FLUSH_INTERVAL = 1.0


async def _ensure(js: JetStreamContext, bucket: str, ttl: float, about: str, replicas: int) -> Any:
    try:
        return await js.key_value(bucket)
    except (BucketNotFoundError, JsNotFoundError):
        return await js.create_key_value(
            config=KeyValueConfig(
                bucket=bucket,
                history=1,
                ttl=ttl,
                storage=StorageType.FILE,
                replicas=replicas,
                description=about,
            )
        )


async def ensure_key_usage_bucket(js: JetStreamContext, replicas: int = 1) -> Any:
    return await _ensure(
        js, subjects.KEY_USAGE_BUCKET, USAGE_TTL, "spend and tokens per API key", replicas
    )


async def ensure_key_rates_bucket(js: JetStreamContext, replicas: int = 1) -> Any:
    return await _ensure(
        js,
        subjects.KEY_RATES_BUCKET,
        RATES_TTL,
        "requests per API key and gateway replica this minute",
        replicas,
    )


class KeyUsageStore:
    """Adds to usage entries (proxy) and mirrors them (gateway, :meth:`watch`)."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._kv: Any = None
        self._cache: dict[str, KeyUsage] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._queued: dict[str, list[tuple[int, str | None, datetime]]] = {}
        self._flusher: asyncio.Task[None] | None = None

    async def bucket(self) -> Any:
        if self._kv is None:
            self._kv = await ensure_key_usage_bucket(self._js)
        return self._kv

    def usage(self, key_id: str) -> KeyUsage | None:
        """Memory only (the watched mirror)."""
        return self._cache.get(key_id)

    async def get(self, key_id: str) -> KeyUsage | None:
        kv = await self.bucket()
        try:
            entry = await kv.get(key_id)
        except KeyNotFoundError:
            return None
        return KeyUsage.model_validate_json(entry.value) if entry.value else None

    async def add(
        self, key_id: str, *, tokens: int, cost_usd: str | None, at: datetime
    ) -> KeyUsage:
        return await self._apply(key_id, [(tokens, cost_usd, at)])

    def add_later(self, key_id: str, *, tokens: int, cost_usd: str | None, at: datetime) -> None:
        """Queue an addition; a flusher applies each key's queue in one
        compare-and-set every ``FLUSH_INTERVAL`` (for keys whose limits do not
        need it at once: no NATS round trip per call)."""
        self._queued.setdefault(key_id, []).append((tokens, cost_usd, at))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(FLUSH_INTERVAL)
        await self.flush()

    async def flush(self) -> None:
        queued, self._queued = self._queued, {}
        for key_id, items in queued.items():
            try:
                await asyncio.wait_for(self._apply(key_id, items), timeout=5.0)
            except Exception as exc:  # the events are the record; this only feeds limits
                log.warning("usage of key %s not added (%d calls): %r", key_id, len(items), exc)

    async def _apply(self, key_id: str, items: list[tuple[int, str | None, datetime]]) -> KeyUsage:
        def fold(usage: KeyUsage) -> KeyUsage:
            for tokens, cost_usd, at in items:
                minute = int(at.timestamp()) // 60
                usage = usage.add(tokens=tokens, cost_usd=cost_usd, at=at, minute=minute)
            return usage

        kv = await self.bucket()
        for _ in range(_MAX_CAS_RETRIES):
            try:
                entry = await kv.get(key_id)
            except KeyNotFoundError:
                entry = None
            if entry is None or not entry.value:
                new = fold(KeyUsage())
                try:
                    await kv.create(key_id, new.model_dump_json().encode())
                except KeyWrongLastSequenceError:
                    continue
                return new
            new = fold(KeyUsage.model_validate_json(entry.value))
            try:
                await kv.update(key_id, new.model_dump_json().encode(), last=entry.revision)
            except KeyWrongLastSequenceError:
                continue
            return new
        raise RuntimeError(f"usage of key {key_id} kept changing under us")

    async def watch(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), timeout=10)

    async def _run(self) -> None:
        while True:
            try:
                kv = await self.bucket()
                watcher = await kv.watchall()
                async for entry in watcher:
                    if entry is None:
                        self._ready.set()
                        continue
                    if entry.operation in ("DEL", "PURGE") or not entry.value:
                        self._cache.pop(entry.key, None)
                    else:
                        self._cache[entry.key] = KeyUsage.model_validate_json(entry.value)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("key usage watch interrupted (%s); resuming", exc)
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
