"""Webhooks: what the gateway registers and the delivery service reads.

* Endpoints live in the KV bucket ``jetty_webhooks`` under
  ``<collection>.<webhook id>``: the URL, the event types, and the signing secret
  (Standard Webhooks ``whsec_<base64>``; shown once, when created).
* Each delivery attempt is a record in the KV bucket ``jetty_webhook_deliveries``
  under ``<webhook id>.<event id>.<attempt>`` (kept ``DELIVERY_TTL``).
* Targets must be public addresses: loopback, private, link-local, multicast and
  reserved ranges are refused unless ``JETTY_WEBHOOK_ALLOW_NETWORKS`` lists them
  (CIDRs, comma separated). Checked when registering and again before each
  delivery (the name may resolve elsewhere by then).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import secrets
import socket
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NoKeysError, NotFoundError
from pydantic import BaseModel, ConfigDict, Field

from shared import subjects
from shared.events.registry import PAYLOADS

DELIVERY_TTL = timedelta(days=7)
#: what a webhook may subscribe to: an event type, a family (``runbook.*``) or ``*``
EVENT_TYPES = tuple(sorted(PAYLOADS))


class WebhookError(ValueError):
    """A registration that cannot be accepted (message for the client)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="https (or http) URL that receives POSTed events")
    event_types: list[str] = Field(
        min_length=1,
        description="event types (runbook.failed), families (runbook.*) or * for all",
    )
    description: str = Field(default="", max_length=500)


class Webhook(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    collection: str
    url: str
    event_types: list[str]
    description: str = ""
    created_at: datetime
    secret: str | None = Field(
        default=None, description="the signing secret: only in the answer that creates it"
    )

    def wants(self, event_type: str) -> bool:
        return any(
            pattern in ("*", event_type)
            or (pattern.endswith(".*") and event_type.startswith(pattern[:-1]))
            for pattern in self.event_types
        )


class StoredWebhook(Webhook):
    secret: str

    def public(self, *, with_secret: bool = False) -> Webhook:
        data = self.model_dump()
        if not with_secret:
            data["secret"] = None
        return Webhook.model_validate(data)


class Delivery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    webhook_id: str
    event_id: str
    event_type: str
    trajectory_id: str
    attempt: int
    outcome: str = Field(description="delivered | failed (retried) | gave_up | refused")
    status_code: int | None = None
    error: str | None = None
    duration_ms: float | None = None
    at: datetime
    next_attempt_at: datetime | None = None


class WebhookList(BaseModel):
    data: list[Webhook]


class DeliveryList(BaseModel):
    data: list[Delivery]


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def new_webhook_id() -> str:
    return "wh_" + secrets.token_hex(10)


def check_event_types(types: list[str]) -> list[str]:
    for i, pattern in enumerate(types):
        family = pattern[:-2] if pattern.endswith(".*") else None
        known = (
            pattern == "*"
            or pattern in EVENT_TYPES
            or (family is not None and any(t.startswith(family + ".") for t in EVENT_TYPES))
        )
        if not known:
            raise WebhookError(
                f"Unknown event type '{pattern}'; known: {', '.join(EVENT_TYPES)} "
                f"(or a family such as runbook.*, or *).",
                f"event_types[{i}]",
            )
    return sorted(set(types))


def parse_networks(raw: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(part.strip()) for part in raw.split(",") if part.strip()]


def _forbidden(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


async def check_target(
    url: str, allowed: list[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> list[str]:
    """The addresses ``url``'s host resolves to, if every one may be called;
    raises :class:`WebhookError` otherwise (SSRF guard)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookError("The webhook URL must be an http(s) URL with a host.", "url")
    if parts.username or parts.password:
        raise WebhookError("The webhook URL must not carry credentials.", "url")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            parts.hostname, port, type=socket.SOCK_STREAM
        )
    except OSError:
        raise WebhookError(
            f"The webhook host '{parts.hostname}' does not resolve.", "url"
        ) from None
    addresses = sorted({str(info[4][0]) for info in infos})
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        if _forbidden(address) and not any(address in net for net in allowed):
            raise WebhookError(
                f"The webhook host resolves to {address}, a loopback, private or "
                f"link-local address; such targets are refused unless the operator "
                f"allows them (JETTY_WEBHOOK_ALLOW_NETWORKS).",
                "url",
            )
    return addresses


async def _bucket(js: JetStreamContext, name: str, ttl: timedelta | None = None) -> Any:
    try:
        return await js.key_value(name)
    except (BucketNotFoundError, NotFoundError):
        return await js.create_key_value(
            config=KeyValueConfig(
                bucket=name,
                history=1,
                storage=StorageType.FILE,
                ttl=ttl.total_seconds() if ttl else None,
                description="webhooks",
            )
        )


class WebhookStore:
    """Endpoints and delivery records in their KV buckets."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self._hooks: Any = None
        self._deliveries: Any = None

    async def _kv(self) -> tuple[Any, Any]:
        if self._hooks is None:
            self._hooks = await _bucket(self.js, subjects.WEBHOOKS_BUCKET)
            self._deliveries = await _bucket(self.js, subjects.DELIVERIES_BUCKET, DELIVERY_TTL)
        return self._hooks, self._deliveries

    async def endpoints_bucket(self) -> Any:
        """The endpoints' KV bucket itself (the delivery service watches it)."""
        hooks, _ = await self._kv()
        return hooks

    async def put(self, hook: StoredWebhook) -> None:
        hooks, _ = await self._kv()
        await hooks.put(
            f"{subjects.token(hook.collection)}.{hook.id}", hook.model_dump_json().encode()
        )

    async def of_collection(self, collection: str) -> list[StoredWebhook]:
        hooks, _ = await self._kv()
        prefix = subjects.token(collection) + "."
        try:
            keys = await hooks.keys()
        except (NoKeysError, NotFoundError):  # an empty bucket
            return []
        found = []
        for key in keys:
            if key.startswith(prefix):
                hook = await self.get(collection, key[len(prefix) :])
                if hook is not None:
                    found.append(hook)
        return sorted(found, key=lambda h: h.created_at)

    async def get(self, collection: str, webhook_id: str) -> StoredWebhook | None:
        hooks, _ = await self._kv()
        try:
            entry = await hooks.get(f"{subjects.token(collection)}.{webhook_id}")
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return StoredWebhook.model_validate_json(entry.value)

    async def delete(self, collection: str, webhook_id: str) -> bool:
        if await self.get(collection, webhook_id) is None:
            return False
        hooks, _ = await self._kv()
        await hooks.purge(f"{subjects.token(collection)}.{webhook_id}")
        return True

    async def record(self, delivery: Delivery) -> None:
        _, deliveries = await self._kv()
        key = f"{delivery.webhook_id}.{delivery.event_id}.{delivery.attempt}"
        await deliveries.put(key, delivery.model_dump_json().encode())

    async def deliveries(self, webhook_id: str) -> list[Delivery]:
        _, deliveries = await self._kv()
        try:
            keys = await deliveries.keys()
        except (NoKeysError, NotFoundError):  # none yet
            return []
        found = []
        for key in keys:
            if key.startswith(webhook_id + "."):
                try:
                    entry = await deliveries.get(key)
                except KeyNotFoundError:
                    continue
                if entry.value:
                    found.append(Delivery.model_validate_json(entry.value))
        return sorted(found, key=lambda d: d.at, reverse=True)


def now() -> datetime:
    return datetime.now(UTC)
