"""Console sign-in sessions.

A person signs in by pasting an API token; the browser gets an opaque session id
in an HttpOnly cookie, and the server keeps, in a JetStream KV bucket with a TTL,
the session's record: the token's *hash* (never the token), the collection and the
session's CSRF secret. The bucket is shared by every gateway replica, so a session
works behind a load balancer and survives a gateway restart; only the SHA-256 of
the session id is a key, so reading the bucket does not give live sessions away.

Every request re-checks the token behind the session (:func:`token_of_session`),
so revoking a token ends its sessions at once. That one function is the seam to
the token store: it is the only place that knows how a session becomes a token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from datetime import UTC, datetime
from typing import Any

import orjson
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError
from pydantic import BaseModel, ConfigDict

from shared import subjects
from shared.tokens import TokenRecord, TokenStore, hash_token

log = logging.getLogger(__name__)

SESSION_TTL_S = 12 * 3600


class Session(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    token_hash: str
    collection: str
    csrf: str
    created_at: datetime


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class SessionStore:
    def __init__(
        self, js: JetStreamContext, ttl_s: float = SESSION_TTL_S, replicas: int = 1
    ) -> None:
        self._js = js
        self._ttl = ttl_s
        self._replicas = replicas
        self._kv: Any = None

    async def _bucket(self) -> Any:
        if self._kv is None:
            try:
                self._kv = await self._js.key_value(subjects.CONSOLE_SESSIONS_BUCKET)
            except (BucketNotFoundError, NotFoundError):
                self._kv = await self._js.create_key_value(
                    config=KeyValueConfig(
                        bucket=subjects.CONSOLE_SESSIONS_BUCKET,
                        history=1,
                        ttl=self._ttl,
                        storage=StorageType.FILE,
                        replicas=self._replicas,
                        description="console session id hashes -> token hash",
                    )
                )
        return self._kv

    async def create(self, token: str, record: TokenRecord) -> tuple[str, Session]:
        session_id = secrets.token_urlsafe(32)
        session = Session(
            token_hash=hash_token(token),
            collection=record.collection,
            csrf=secrets.token_urlsafe(24),
            created_at=datetime.now(UTC),
        )
        kv = await self._bucket()
        await kv.put(_key(session_id), session.model_dump_json().encode())
        return session_id, session

    async def get(self, session_id: str) -> Session | None:
        if not session_id or len(session_id) > 128:
            return None
        kv = await self._bucket()
        try:
            entry = await kv.get(_key(session_id))
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return Session.model_validate(orjson.loads(entry.value))

    async def end(self, session_id: str) -> None:
        kv = await self._bucket()
        try:
            await kv.delete(_key(session_id))
        except (KeyNotFoundError, NatsError) as exc:
            log.info("ending a session: %s", exc.__class__.__name__)


async def token_of_session(tokens: TokenStore, session: Session) -> TokenRecord | None:
    """The token a session stands for, if it may still be used: not revoked, not
    deleted, not expired, of the same collection, and not a runbook's run-scoped
    token."""
    record = await tokens.fetch(session.token_hash)
    if record is None or record.revoked or record.trajectory_id is not None:
        return None
    if record.expired(datetime.now(UTC)):
        return None
    if record.collection != session.collection:
        return None
    return record


def csrf_ok(session: Session, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(session.csrf, sent or "")
