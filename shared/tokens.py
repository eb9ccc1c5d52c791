"""API tokens. Only the SHA-256 of a token is ever stored (in a JetStream KV
bucket, so the gateway's hot path never reads Postgres); each token belongs to
one collection."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import nats.errors
import orjson
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from pydantic import BaseModel, ConfigDict

from shared.bus import ensure_tokens_bucket

log = logging.getLogger(__name__)

MISS_TTL = 1.0
MISS_LOOKUP_TIMEOUT = 1.0
MAX_REMEMBERED_MISSES = 10_000
COLLECTION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class TokenRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    collection: str
    name: str = ""
    created_at: datetime
    revoked: bool = False
    #: set for a run-scoped token (handed to a runbook's agent): it reaches only
    #: the model endpoints, and every call it makes is a step of this trajectory
    trajectory_id: str | None = None


def generate_token() -> str:
    return "jt_" + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def valid_collection(name: str) -> bool:
    return bool(COLLECTION_RE.match(name))


class TokenStore:
    """Reads and writes token records; :meth:`watch` mirrors the bucket in memory."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._kv: Any = None
        self._cache: dict[str, TokenRecord] = {}
        self._watch_task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._misses: dict[str, float] = {}

    async def _bucket(self) -> Any:
        if self._kv is None:
            self._kv = await ensure_tokens_bucket(self._js)
        return self._kv

    async def register(
        self, token: str, collection: str, name: str = "", *, trajectory_id: str | None = None
    ) -> TokenRecord:
        if not valid_collection(collection):
            raise ValueError(f"invalid collection name {collection!r}")
        record = TokenRecord(
            collection=collection,
            name=name,
            created_at=datetime.now(UTC),
            trajectory_id=trajectory_id,
        )
        kv = await self._bucket()
        await kv.put(hash_token(token), record.model_dump_json().encode())
        self._cache[hash_token(token)] = record
        return record

    async def create(self, collection: str, name: str = "") -> str:
        token = generate_token()
        await self.register(token, collection, name)
        return token

    async def revoke(self, token_hash: str) -> None:
        kv = await self._bucket()
        await kv.delete(token_hash)

    async def fetch(self, token_hash: str) -> TokenRecord | None:
        kv = await self._bucket()
        try:
            entry = await kv.get(token_hash)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return TokenRecord.model_validate(orjson.loads(entry.value))

    def lookup(self, token: str) -> TokenRecord | None:
        """Memory only: no I/O on the request path."""
        record = self._cache.get(hash_token(token))
        if record is None or record.revoked:
            return None
        return record

    async def resolve(self, token: str) -> TokenRecord | None:
        """Memory first; on a miss read the bucket once, so a token created a
        moment ago works before the watch delivers it. Misses are remembered
        briefly so a flood of bad tokens costs no bucket reads."""
        record = self.lookup(token)
        if record is not None:
            return record
        token_hash = hash_token(token)
        now = time.monotonic()
        if self._misses.get(token_hash, 0.0) > now:
            return None
        try:
            record = await asyncio.wait_for(self.fetch(token_hash), MISS_LOOKUP_TIMEOUT)
        except (TimeoutError, nats.errors.Error) as exc:
            log.warning("token lookup failed: %s", exc.__class__.__name__)
            return None
        if record is None or record.revoked:
            if len(self._misses) >= MAX_REMEMBERED_MISSES:
                self._misses.clear()
            self._misses[token_hash] = now + MISS_TTL
            return None
        self._cache[token_hash] = record
        return record

    async def watch(self) -> None:
        """Start mirroring the bucket; returns once the initial state is loaded."""
        if self._watch_task is None:
            self._watch_task = asyncio.create_task(self._run_watch())
        await asyncio.wait_for(self._ready.wait(), timeout=10)

    async def _run_watch(self) -> None:
        while True:
            try:
                kv = await self._bucket()
                watcher = await kv.watchall()
                async for entry in watcher:
                    if entry is None:  # end of the initial values
                        self._ready.set()
                        continue
                    if entry.operation in ("DEL", "PURGE") or not entry.value:
                        self._cache.pop(entry.key, None)
                    else:
                        self._cache[entry.key] = TokenRecord.model_validate(
                            orjson.loads(entry.value)
                        )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("token watch interrupted (%s); resuming", exc)
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
