"""``jetty events tail``: the event stream itself, read from NATS (JetStream) with
an ordered, ephemeral consumer — nothing durable is left behind.

NATS is ``--nats`` / ``JETTY_NATS_URL``, or the embedded stack's. One event per
line (time, type, collection, trajectory, a few facts), ``--json`` for JSONL (the
envelopes as published). ``--since 10m`` starts that far back (``s``, ``m``, ``h``,
``d``), otherwise only new events; ``--type`` filters (``completion.failed``,
``runbook.*``), ``--collection`` keeps one collection; ``--no-follow`` stops at the
newest event instead of waiting for more."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import nats
import orjson
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from jetty_cli.client import CliError
from jetty_cli.home import Home
from shared import subjects

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_EMPTY_WAIT = 3.0
_CONNECT_WAIT = 5.0


def parse_since(value: str) -> datetime:
    match = _DURATION.match(value.strip())
    if match:
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
        return datetime.now(UTC) - timedelta(seconds=seconds)
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise CliError(f"--since {value!r}: use a duration (10m, 2h, 1d) or ISO 8601") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def filter_subject(collection: str | None, event_type: str | None) -> str:
    prefix = f"{subjects.EVENTS_PREFIX}.{subjects.token(collection) if collection else '*'}"
    if not event_type:
        return prefix + ".>"
    if not re.fullmatch(r"[a-z_]+(\.[a-z_]+)*(\.\*)?|[a-z_]+\.>", event_type):
        raise CliError(
            f"--type {event_type!r}: an event type such as completion.failed or runbook.*"
        )
    return f"{prefix}.{event_type}"


def describe(doc: dict[str, Any]) -> str:
    data = doc.get("data") or {}
    facts = []
    for key in ("task", "model", "status", "agent", "path", "kind", "progress"):
        value = data.get(key)
        if isinstance(value, str) and value:
            flat = " ".join(value.split())
            facts.append(f"{key}={flat[:60]}")
    error = data.get("error")
    if isinstance(error, dict) and error.get("code"):
        facts.append(f"error={error['code']}")
    usage = data.get("usage")
    if isinstance(usage, dict) and usage.get("total_tokens") is not None:
        facts.append(f"tokens={usage['total_tokens']}")
    when = str(doc.get("time", ""))[:23].replace("T", " ")
    return (
        f"{when}  {doc.get('type', '?'):<22} {doc.get('collection', '?')}  "
        f"{doc.get('trajectory_id', '?')}  {' '.join(facts)}"
    ).rstrip()


def _nats_url(args: argparse.Namespace) -> str:
    url = args.nats or os.environ.get("JETTY_NATS_URL")
    if url:
        return str(url)
    stack = Home().read_stack()
    if stack is None:
        raise CliError("no NATS: set JETTY_NATS_URL (or --nats), or start a stack with `make up`")
    return stack.nats_url


async def _quiet() -> None:
    pass


async def tail(args: argparse.Namespace) -> int:
    subject = filter_subject(args.collection, args.type)
    since = parse_since(args.since) if args.since else None
    url = _nats_url(args)
    errors: list[Exception] = []

    async def remember(exc: Exception) -> None:
        errors.append(exc)

    try:
        # nats-py keeps retrying a refused first connect: bound it ourselves.
        nc = await asyncio.wait_for(
            nats.connect(
                servers=[u.strip() for u in url.split(",") if u.strip()],
                name="jetty-cli-events",
                allow_reconnect=False,
                connect_timeout=3,
                disconnected_cb=_quiet,
                error_cb=remember,
            ),
            _CONNECT_WAIT,
        )
    except Exception as exc:  # nats-py raises several unrelated types here
        reason = errors[0] if errors else exc
        raise CliError(f"cannot reach NATS at {url}: {reason or type(reason).__name__}") from None
    done = asyncio.Event()
    count = 0

    async def on_msg(msg: Msg) -> None:
        nonlocal count
        if done.is_set():
            return
        try:
            doc = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            return
        line = orjson.dumps(doc).decode() if args.json else describe(doc)
        try:
            print(line, flush=True)
        except BrokenPipeError:  # `jetty events tail | head`
            done.set()
            return
        count += 1
        if args.limit and count >= args.limit:
            done.set()
        if args.no_follow and msg.metadata.num_pending == 0:
            done.set()

    config = (
        ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=since)
        if since
        else ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
    )
    try:
        await nc.jetstream().subscribe(subject, ordered_consumer=True, config=config, cb=on_msg)
        if args.no_follow:
            # Nothing at all to print: there is no last message to say so.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), _EMPTY_WAIT)
        else:
            await done.wait()
    finally:
        await nc.close()
    return 0


def run_tail(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(tail(args))
    except KeyboardInterrupt:
        return 0
    finally:
        sys.stdout.flush()
