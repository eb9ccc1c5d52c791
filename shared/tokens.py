"""API tokens (keys). Only the SHA-256 of a token is ever stored (in a JetStream KV
bucket, so the gateway's hot path never reads Postgres); each token belongs to
one collection and carries its key's policy (:mod:`shared.keys`)."""

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
from pydantic import ConfigDict

from shared.bus import ensure_tokens_bucket
from shared.keys import KeyInfo, KeyLimits, KeyPolicy, RunKey, legacy_key_id, new_key_id

log = logging.getLogger(__name__)

MISS_TTL = 1.0
MISS_LOOKUP_TIMEOUT = 1.0
MAX_REMEMBERED_MISSES = 10_000
COLLECTION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class TokenRecord(KeyPolicy):
    model_config = ConfigDict(frozen=True, extra="ignore")

    collection: str
    name: str = ""
    created_at: datetime
    revoked: bool = False
    #: set for a run-scoped token (handed to a runbook's agent): it reaches only
    #: the model endpoints, and every call it makes is a step of this trajectory
    trajectory_id: str | None = None
    #: for a run-scoped token: the key that started the run. The run's calls add
    #: their usage to that key and are checked against ``budget`` and
    #: ``limits.tokens_per_minute``, copied from it when the run was accepted.
    parent_key_id: str | None = None
    # The key's identity and policy (KeyPolicy, shared/keys.py). A record written
    # before keys existed has none of them: it is an "api" key without limits,
    # whose id is derived from its hash when it is loaded.
    id: str = ""
    #: set on the old secret of a rotated key: it works until ``expires_at``
    #: (the grace period) and is not listed
    superseded: bool = False

    def info(self) -> KeyInfo:
        return KeyInfo(
            id=self.id,
            collection=self.collection,
            name=self.name,
            created_at=self.created_at,
            **self.policy(),
        )

    @property
    def meter_id(self) -> str:
        """The key whose usage and limits this secret's calls count toward."""
        return self.parent_key_id or self.id

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


def generate_token() -> str:
    return "jt_" + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def valid_collection(name: str) -> bool:
    return bool(COLLECTION_RE.match(name))


MAX_REMEMBERED_HASHES = 4096


class TokenStore:
    """Reads and writes token records; :meth:`watch` mirrors the bucket in memory."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._kv: Any = None
        self._cache: dict[str, TokenRecord] = {}
        self._watch_task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._misses: dict[str, float] = {}
        # token -> its hash, for tokens that were found: one SHA-256 per token, not
        # per request. Bounded; a hash never changes, so nothing to invalidate.
        self._hashes: dict[str, str] = {}

    async def _bucket(self) -> Any:
        if self._kv is None:
            self._kv = await ensure_tokens_bucket(self._js)
        return self._kv

    async def register(
        self,
        token: str,
        collection: str,
        name: str = "",
        *,
        trajectory_id: str | None = None,
        **policy: Any,
    ) -> TokenRecord:
        """Store ``token`` (its hash) as a key of ``collection``; ``policy`` holds
        the other :class:`TokenRecord` fields (scopes, limits, ...)."""
        if not valid_collection(collection):
            raise ValueError(f"invalid collection name {collection!r}")
        policy.setdefault("id", new_key_id())
        record = TokenRecord(
            collection=collection,
            name=name,
            created_at=datetime.now(UTC),
            trajectory_id=trajectory_id,
            **policy,
        )
        await self.put(hash_token(token), record)
        return record

    async def register_run_token(
        self, token: str, collection: str, trajectory_id: str, key: RunKey | None
    ) -> TokenRecord:
        """The token a runbook's agent calls the models with: it reaches only the
        model endpoints of ``trajectory_id``; with ``key``, its calls also count
        toward that key's usage, budget and tokens per minute."""
        meter: dict[str, Any] = {}
        if key is not None:
            meter = {
                "parent_key_id": key.id,
                "budget": key.budget,
                "limits": KeyLimits(tokens_per_minute=key.tokens_per_minute),
            }
        return await self.register(
            token, collection, f"run {trajectory_id}", trajectory_id=trajectory_id, **meter
        )

    async def put(self, token_hash: str, record: TokenRecord) -> None:
        kv = await self._bucket()
        await kv.put(token_hash, record.model_dump_json().encode())
        self._cache[token_hash] = record

    async def create(self, collection: str, name: str = "", **policy: Any) -> str:
        token = generate_token()
        await self.register(token, collection, name, **policy)
        return token

    def by_id(self, key_id: str) -> list[tuple[str, TokenRecord]]:
        """Every stored secret of one key (more than one during a rotation's grace)."""
        return [(h, r) for h, r in self._cache.items() if r.id == key_id]

    def in_collection(self, collection: str) -> list[TokenRecord]:
        """The listed keys of a collection (no run-scoped or superseded secrets)."""
        return [
            r
            for r in self._cache.values()
            if r.collection == collection
            and r.trajectory_id is None
            and not r.superseded
            and not r.revoked
        ]

    async def revoke(self, token_hash: str) -> None:
        kv = await self._bucket()
        await kv.delete(token_hash)
        self._cache.pop(token_hash, None)

    async def fetch(self, token_hash: str) -> TokenRecord | None:
        kv = await self._bucket()
        try:
            entry = await kv.get(token_hash)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return _decode(token_hash, entry.value)

    def lookup(self, token: str) -> TokenRecord | None:
        """Memory only: no I/O on the request path."""
        token_hash = self._hashes.get(token)
        if token_hash is None:
            token_hash = hash_token(token)
            record = self._cache.get(token_hash)
            if record is not None:
                if len(self._hashes) >= MAX_REMEMBERED_HASHES:
                    self._hashes.clear()
                self._hashes[token] = token_hash
        else:
            record = self._cache.get(token_hash)
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
                        self._cache[entry.key] = _decode(entry.key, entry.value)
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


def _decode(token_hash: str, value: bytes) -> TokenRecord:
    record = TokenRecord.model_validate(orjson.loads(value))
    if not record.id:
        record = record.model_copy(update={"id": legacy_key_id(token_hash)})
    return record
