"""Typed application state shared by the gateway's handlers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from services.gateway.ratelimit import RateLimiter
from services.gateway.relay import ProxyRelay
from services.gateway.settings import GatewaySettings
from shared.bus import ClaimStore, EventPublisher
from shared.key_usage import KeyUsageStore
from shared.objectstore import ObjectStore
from shared.runs import RunStates
from shared.tokens import TokenRecord, TokenStore


@dataclass
class Gateway:
    settings: GatewaySettings
    nc: NATS
    js: JetStreamContext
    relay: ProxyRelay
    tokens: TokenStore
    claims: ClaimStore
    runs: RunStates
    publisher: EventPublisher
    key_usage: KeyUsageStore
    limiter: RateLimiter
    pool: asyncpg.Pool | None = None
    objects: ObjectStore | None = None  # created on first upload
    background: set[asyncio.Future[None]] = field(default_factory=set)
    #: per-feature helpers created on first use, by the feature's own module
    extensions: dict[str, Any] = field(default_factory=dict)


GATEWAY = web.AppKey("gateway", Gateway)
AUTH = "jetty.auth"


def auth_of(request: web.Request) -> TokenRecord:
    record = request[AUTH]
    assert isinstance(record, TokenRecord)
    return record
