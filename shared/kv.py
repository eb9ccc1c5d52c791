"""Small helpers for the JetStream key-value buckets the Jetty-parity features keep
their state in (files, secrets, routines): open-or-create, and read every value
under a key prefix."""

from __future__ import annotations

from typing import Any

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError
from nats.js.errors import NotFoundError as JsNotFoundError


async def open_bucket(
    js: JetStreamContext, name: str, description: str, *, ttl: float | None = None
) -> Any:
    """The bucket ``name``, created (file storage, one revision kept) if missing."""
    try:
        return await js.key_value(name)
    except (BucketNotFoundError, JsNotFoundError):
        return await js.create_key_value(
            config=KeyValueConfig(
                bucket=name, history=1, ttl=ttl, storage=StorageType.FILE, description=description
            )
        )


async def values_under(kv: Any, pattern: str) -> list[bytes]:
    """Every current value whose key matches ``pattern`` (``<prefix>.>``), read with
    one watch instead of a get per key."""
    watcher = await kv.watch(pattern, ignore_deletes=True)
    found: list[bytes] = []
    try:
        async for entry in watcher:
            if entry is None:  # the end of the current values
                break
            if entry.value:
                found.append(entry.value)
    finally:
        await watcher.stop()
    return found
