"""Secrets: encrypted at rest, handed to a run's sandbox as environment
variables, and masked out of everything recorded.

* :class:`SecretBox` encrypts with AES-256-GCM (``cryptography``) under the
  operator's key (``JETTY_SECRETS_KEY``, 32 bytes base64); the associated data
  binds each ciphertext to where it is stored, so one cannot be moved to another
  collection or run.
* :class:`CollectionSecrets`: the bucket ``jetty_secrets``, key
  ``<collection>.<NAME>``, values write-only through the API.
* :class:`RunSecrets`: the bucket ``jetty_run_secrets``, key = trajectory id: the
  names and values one run gets (its collection's secrets at request time, then
  ``jetty.secret_params`` over them), written by the gateway before the run is
  queued, read by the runner (environment, masks) and the proxy (masks), removed
  when the run ends.
* :class:`Masker` replaces every value, as it appears inside JSON text, by
  ``[secret:NAME]``; :class:`MaskRegistry` holds the maskers of the runs a process
  is serving, and the :class:`~shared.bus.EventPublisher` applies them to every
  event of those trajectories before it leaves the process.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from pydantic import BaseModel, ConfigDict

from shared.kv import open_bucket, values_under

SECRETS_BUCKET = "jetty_secrets"
RUN_SECRETS_BUCKET = "jetty_run_secrets"
RUN_SECRETS_TTL = 7 * 24 * 3600.0
NAME_PATTERN = r"^[A-Z_][A-Z0-9_]{0,127}$"
NAME_RE = re.compile(NAME_PATTERN)
MIN_VALUE_CHARS = 4
MAX_VALUE_BYTES = 32 * 1024
#: names a secret may not take: the sandbox and the agents set these themselves
RESERVED = frozenset({"PATH", "HOME", "USER", "SHELL", "TMPDIR", "PWD", "LANG", "TERM"})


class SecretsError(Exception):
    pass


class SecretsNotConfigured(SecretsError):
    pass


class SecretBox:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise SecretsError("JETTY_SECRETS_KEY must decode to 32 bytes")
        self._aead = AESGCM(key)

    @classmethod
    def from_setting(cls, value: str | None) -> SecretBox:
        if not value:
            raise SecretsNotConfigured("JETTY_SECRETS_KEY is not set")
        try:
            key = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise SecretsError("JETTY_SECRETS_KEY is not valid base64") from None
        return cls(key)

    def seal(self, plaintext: bytes, where: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plaintext, where.encode())
        return base64.b64encode(nonce + sealed).decode()

    def open(self, sealed: str, where: str) -> bytes:
        raw = base64.b64decode(sealed)
        try:
            return self._aead.decrypt(raw[:12], raw[12:], where.encode())
        except InvalidTag:
            raise SecretsError(f"secret at {where} does not decrypt with this key") from None


def new_key() -> str:
    """A fresh key for ``JETTY_SECRETS_KEY``."""
    return base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()


class SecretMeta(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    created_at: int
    updated_at: int


class _Stored(SecretMeta):
    sealed: str


class CollectionSecrets:
    def __init__(self, js: JetStreamContext, box: SecretBox) -> None:
        self._js = js
        self._box = box
        self._kv: Any = None

    async def _get_kv(self) -> Any:
        if self._kv is None:
            self._kv = await open_bucket(
                self._js, SECRETS_BUCKET, "per-collection secrets (AES-GCM sealed)"
            )
        return self._kv

    async def put(self, collection: str, name: str, value: str, now: int) -> SecretMeta:
        kv = await self._get_kv()
        key = f"{collection}.{name}"
        created = now
        try:
            entry = await kv.get(key)
            if entry.value:
                created = _Stored.model_validate_json(entry.value).created_at
        except KeyNotFoundError:
            pass
        stored = _Stored(
            name=name,
            created_at=created,
            updated_at=now,
            sealed=self._box.seal(value.encode(), key),
        )
        await kv.put(key, stored.model_dump_json().encode())
        return SecretMeta(name=name, created_at=created, updated_at=now)

    async def _entries(self, collection: str) -> list[_Stored]:
        kv = await self._get_kv()
        found = [_Stored.model_validate_json(v) for v in await values_under(kv, f"{collection}.>")]
        return sorted(found, key=lambda s: s.name)

    async def names(self, collection: str) -> list[SecretMeta]:
        return [
            SecretMeta(**s.model_dump(exclude={"sealed"})) for s in await self._entries(collection)
        ]

    async def values(self, collection: str) -> dict[str, str]:
        return {
            s.name: self._box.open(s.sealed, f"{collection}.{s.name}").decode()
            for s in await self._entries(collection)
        }

    async def delete(self, collection: str, name: str) -> bool:
        kv = await self._get_kv()
        key = f"{collection}.{name}"
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            return False
        if not entry.value:
            return False
        await kv.purge(key)
        return True


class RunSecrets:
    def __init__(self, js: JetStreamContext, box: SecretBox) -> None:
        self._js = js
        self._box = box
        self._kv: Any = None

    async def _get_kv(self) -> Any:
        if self._kv is None:
            self._kv = await open_bucket(
                self._js, RUN_SECRETS_BUCKET, "secrets of live runs (sealed)", ttl=RUN_SECRETS_TTL
            )
        return self._kv

    async def put(self, trajectory_id: str, values: dict[str, str]) -> None:
        kv = await self._get_kv()
        sealed = self._box.seal(orjson.dumps(values), f"run.{trajectory_id}")
        await kv.put(trajectory_id, sealed.encode())

    async def get(self, trajectory_id: str) -> dict[str, str]:
        kv = await self._get_kv()
        try:
            entry = await kv.get(trajectory_id)
        except KeyNotFoundError:
            return {}
        if not entry.value:
            return {}
        values = orjson.loads(self._box.open(entry.value.decode(), f"run.{trajectory_id}"))
        assert isinstance(values, dict)
        return {str(k): str(v) for k, v in values.items()}

    async def delete(self, trajectory_id: str) -> None:
        kv = await self._get_kv()
        await kv.purge(trajectory_id)


class Masker:
    """Replaces secret values by ``[secret:NAME]``, in plain text and in JSON text
    (where a value may appear escaped). Longer values first, so a value that
    contains another is masked whole."""

    def __init__(self, values: dict[str, str]) -> None:
        pairs: list[tuple[bytes, bytes]] = []
        for name, value in values.items():
            if len(value) < MIN_VALUE_CHARS:
                continue
            marker = f"[secret:{name}]".encode()
            forms = {value.encode(), orjson.dumps(value)[1:-1]}
            pairs += [(form, marker) for form in forms]
        self._pairs = sorted(pairs, key=lambda p: -len(p[0]))

    def __bool__(self) -> bool:
        return bool(self._pairs)

    def mask_bytes(self, data: bytes) -> bytes:
        for secret, marker in self._pairs:
            if secret in data:
                data = data.replace(secret, marker)
        return data

    def mask_text(self, text: str) -> str:
        return self.mask_bytes(text.encode()).decode()


class MaskRegistry:
    """The maskers of the trajectories a process is serving (reference-counted,
    for the proxy's concurrent calls of one run)."""

    def __init__(self) -> None:
        self._maskers: dict[str, tuple[Masker, int]] = {}

    def acquire(self, trajectory_id: str, masker: Masker) -> None:
        _, count = self._maskers.get(trajectory_id, (masker, 0))
        self._maskers[trajectory_id] = (masker, count + 1)

    def release(self, trajectory_id: str) -> None:
        found = self._maskers.get(trajectory_id)
        if found is None:
            return
        masker, count = found
        if count <= 1:
            del self._maskers[trajectory_id]
        else:
            self._maskers[trajectory_id] = (masker, count - 1)

    def get(self, trajectory_id: str) -> Masker | None:
        found = self._maskers.get(trajectory_id)
        return None if found is None else found[0]

    def __bool__(self) -> bool:
        return bool(self._maskers)
