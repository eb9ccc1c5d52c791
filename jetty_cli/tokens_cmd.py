"""``jetty tokens create|revoke``: API tokens in the NATS KV bucket.

Which NATS: ``JETTY_NATS_URL`` if set; else the running ``jetty up`` stack's (from
``run/stack.json``), so the gateway, which watches the bucket, accepts a new token
at once; else the embedded server is started on the same store directory for the
moment of the write (holding ``run/up.lock`` so a ``jetty up`` cannot start on
that store meanwhile).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

from nats.aio.client import Client as NATS
from pydantic import ValidationError

from jetty_cli import procs
from jetty_cli.embedded import EmbeddedNats
from jetty_cli.home import Home
from shared.bus import EventPublisher, connect, ensure_streams, source_name
from shared.keys import KeyBudget, KeyCreated, KeyLimits
from shared.tokens import TokenStore, generate_token, hash_token, valid_collection

CONNECT_TIMEOUT = 5.0
WRITE_TIMEOUT = 15.0
ACCEPT_TIMEOUT = 15.0


async def _quiet() -> None:
    """Closing the connection 'disconnects' it: not worth a warning here."""


async def _connect(nats_url: str) -> NATS:
    # One attempt: a command-line tool should fail fast, not wait for ever.
    return await connect(
        nats_url,
        "jetty-cli",
        max_reconnect_attempts=0,
        connect_timeout=CONNECT_TIMEOUT,
        disconnected_cb=_quiet,
    )


async def create_token(nats_url: str, collection: str, name: str = "", **policy: Any) -> str:
    """Create, store (hash only) and return a new token for ``collection``; with a
    ``policy`` (scopes, limits, ...), also publish its ``key.created`` event."""
    nc = await _connect(nats_url)
    try:
        js = nc.jetstream()
        store = TokenStore(js)
        token = generate_token()
        record = await asyncio.wait_for(
            store.register(token, collection, name, **policy), WRITE_TIMEOUT
        )
        await asyncio.wait_for(ensure_streams(js), WRITE_TIMEOUT)
        publisher = EventPublisher(nc, js, source_name("jetty-cli"), 256 * 1024)
        await publisher.publish(collection, record.id, KeyCreated(key=record.info()))
        await publisher.flush(WRITE_TIMEOUT)
        return token
    finally:
        await nc.close()


def key_policy(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~shared.tokens.TokenRecord` fields the options ask for; raises
    ValueError naming the bad option."""
    scopes: list[str] = list(getattr(args, "scope", None) or [])
    if getattr(args, "admin", False):
        scopes = [*(scopes or ["api"]), "admin"]
    policy: dict[str, Any] = {}
    if scopes:
        policy["scopes"] = tuple(dict.fromkeys(scopes))
    if getattr(args, "expires_at", None):
        try:
            expires = datetime.fromisoformat(args.expires_at)
        except ValueError:
            raise ValueError(f"--expires-at: not an RFC 3339 time: {args.expires_at!r}") from None
        if expires.tzinfo is None:
            raise ValueError("--expires-at needs a time zone (e.g. 2027-01-01T00:00:00Z)")
        policy["expires_at"] = expires
    if getattr(args, "allowed_model", None):
        policy["allowed_models"] = tuple(args.allowed_model)
    rpm, tpm = getattr(args, "rpm", None), getattr(args, "tpm", None)
    if rpm is not None or tpm is not None:
        try:
            policy["limits"] = KeyLimits(requests_per_minute=rpm, tokens_per_minute=tpm)
        except ValidationError:
            raise ValueError("--rpm and --tpm must be at least 1") from None
    if getattr(args, "budget_usd", None):
        try:
            policy["budget"] = KeyBudget(usd=Decimal(args.budget_usd), period=args.budget_period)
        except (ValidationError, ArithmeticError):
            raise ValueError(f"--budget-usd: not a positive amount: {args.budget_usd!r}") from None
    meta: dict[str, str] = {}
    for item in getattr(args, "meta", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--meta wants KEY=VALUE, got {item!r}")
        meta[key] = value
    if meta:
        policy["metadata"] = meta
    return policy


async def register_token(nats_url: str, token: str, collection: str, name: str = "") -> bool:
    """Make sure ``token`` maps to ``collection``; True if it had to be written."""
    nc = await _connect(nats_url)
    try:
        store = TokenStore(nc.jetstream())
        existing = await asyncio.wait_for(store.fetch(hash_token(token)), WRITE_TIMEOUT)
        if existing is not None and existing.collection == collection and not existing.revoked:
            return False
        await asyncio.wait_for(store.register(token, collection, name), WRITE_TIMEOUT)
        return True
    finally:
        await nc.close()


async def revoke_token(nats_url: str, token: str) -> bool:
    """Delete a token; False if it was not known."""
    nc = await _connect(nats_url)
    try:
        store = TokenStore(nc.jetstream())
        token_hash = hash_token(token)
        if await asyncio.wait_for(store.fetch(token_hash), WRITE_TIMEOUT) is None:
            return False
        await asyncio.wait_for(store.revoke(token_hash), WRITE_TIMEOUT)
        return True
    finally:
        await nc.close()


def wait_accepted(base_url: str, token: str, timeout: float = ACCEPT_TIMEOUT) -> None:
    """Wait until the gateway at ``base_url`` accepts ``token``.

    The gateway learns tokens by watching the KV bucket, a few milliseconds after
    the write; waiting here makes "create, then use at once" hold."""
    headers = {"Authorization": f"Bearer {token}"}

    def accepted() -> bool:
        try:
            status, _ = procs.http_get(base_url + "/v1/models", timeout=2.0, headers=headers)
        except OSError:
            return False
        return status != 401

    procs.wait_until(
        accepted, timeout=timeout, interval=0.02, describe="the gateway accepting the token"
    )


@contextlib.contextmanager
def nats_for_cli(home: Home) -> Iterator[tuple[str, str | None]]:
    """(NATS URL, running gateway URL or None) for the command line (see the module
    docstring)."""
    env_url = os.environ.get("JETTY_NATS_URL")
    if env_url:
        yield env_url, None
        return
    with home.locked() as free:
        if not free:
            info = home.wait_for_stack()
            yield info.nats_url, info.base_url
            return
        # No stack: this process owns the store until it returns.
        home.ensure()
        server = EmbeddedNats(home.nats_dir, log_path=home.logs_dir / "nats.log")
        with server:
            yield server.url, None


def run_create(args: argparse.Namespace) -> int:
    if not valid_collection(args.collection):
        print(
            f"jetty: invalid collection {args.collection!r} (letters, digits, _ and -, "
            "starting with a letter or digit, at most 64)",
            file=sys.stderr,
        )
        return 2
    try:
        policy = key_policy(args)
    except ValueError as exc:
        print(f"jetty: {exc}", file=sys.stderr)
        return 2
    with nats_for_cli(Home()) as (url, gateway):
        token = asyncio.run(create_token(url, args.collection, args.name, **policy))
        if gateway is not None:
            try:
                wait_accepted(gateway, token)
            except TimeoutError as exc:  # stored all the same: say so, still print it
                print(f"jetty: warning: {exc}", file=sys.stderr)
    print(token)
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    token = args.token
    if token == "-":
        token = sys.stdin.readline().strip()
    with nats_for_cli(Home()) as (url, _gateway):
        found = asyncio.run(revoke_token(url, token))
    if not found:
        print("jetty: no such token", file=sys.stderr)
        return 1
    print("revoked")
    return 0
