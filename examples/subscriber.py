"""A small internal service that reacts to Jetty's events: every finished chat
completion and every runbook's progress, from NATS JetStream.

    python examples/subscriber.py                       # against `make up`
    python examples/subscriber.py --since 2026-01-01T00:00:00Z --durable billing-v2
    JETTY_NATS_URL=nats://nats:4222 python examples/subscriber.py

What it shows:

* **A durable consumer** (``--durable``, default ``example-subscriber``): the
  server remembers how far it got, so a restart carries on where it stopped,
  and events published while it was down wait for it.
* **Acknowledge after your own work.** Each event is handled first (here: a line
  printed and the event id written down), then acked. If the process dies in
  between, the server redelivers the event after ``ack_wait`` seconds.
* **Tolerating redelivery**: every event has a unique ``id`` (also its
  ``Nats-Msg-Id``); handling is skipped for an id already handled. The ids are
  kept in a small SQLite file (``--state``); a real service keeps them with its
  own data, in the same transaction as its work.
* **Starting from a point in time**: ``--since`` applies when the durable is
  first created (``DeliverPolicy.BY_START_TIME``); afterwards the durable's own
  position wins. Without it, a new durable starts with new events only.

Only ``nats-py`` is needed (``pip install nats-py``); the envelope is described
in docs/events.md and ``jetty schemas`` prints the JSON Schema of each payload.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import sys
from datetime import datetime
from pathlib import Path

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import FetchTimeoutError, NotFoundError

STREAM = "JETTY_EVENTS"
SUBJECTS = ["jetty.events.*.completion.finished", "jetty.events.*.runbook.>"]


def default_nats_url() -> str:
    """$JETTY_NATS_URL, else the `make up` stack's (from .jetty/run/stack.json)."""
    if os.environ.get("JETTY_NATS_URL"):
        return os.environ["JETTY_NATS_URL"]
    home = Path(os.environ.get("JETTY_HOME", Path(__file__).resolve().parents[1] / ".jetty"))
    try:
        return str(json.loads((home / "run" / "stack.json").read_text())["nats_url"])
    except (OSError, KeyError, ValueError):
        return "nats://127.0.0.1:4222"


class Handled:
    """The ids of the events already handled (redelivery is then a no-op)."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path)
        self.db.execute("CREATE TABLE IF NOT EXISTS handled (id TEXT PRIMARY KEY)")

    def first_time(self, event_id: str) -> bool:
        cursor = self.db.execute("INSERT OR IGNORE INTO handled (id) VALUES (?)", (event_id,))
        self.db.commit()
        return cursor.rowcount == 1


def handle(event: dict) -> str:
    """Our own work for one event; here, one line describing it."""
    data = event.get("data") or {}
    usage = data.get("usage") or {}
    facts = [f"task={data.get('task')}"]
    if event["type"] == "completion.finished":
        facts.append(f"model={data.get('model')} tokens={usage.get('total_tokens')}")
    elif data.get("kind"):
        facts.append(f"step={data['kind']}")
    return f"{event['time']} {event['type']} {event['collection']} {event['trajectory_id']} " + (
        " ".join(facts)
    )


async def consume(args: argparse.Namespace) -> int:
    nc = await nats.connect(args.nats, name=args.durable)
    js = nc.jetstream()
    config = ConsumerConfig(
        durable_name=args.durable,
        filter_subjects=SUBJECTS,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=args.ack_wait,
        max_deliver=-1,
        deliver_policy=DeliverPolicy.BY_START_TIME if args.since else DeliverPolicy.NEW,
        opt_start_time=datetime.fromisoformat(args.since) if args.since else None,
    )
    try:
        await js.consumer_info(STREAM, args.durable)  # exists: keep its position
    except NotFoundError:
        await js.add_consumer(STREAM, config)
    sub = await js.pull_subscribe_bind(args.durable, STREAM)
    handled = Handled(args.state)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    idle = 0.0
    count = 0
    while not stop.is_set():
        try:
            messages = await sub.fetch(batch=50, timeout=1.0)
        except (FetchTimeoutError, TimeoutError):
            idle += 1.0
            if args.exit_when_idle and idle >= args.exit_when_idle:
                break
            continue
        idle = 0.0
        for msg in messages:
            event = json.loads(msg.data)
            if handled.first_time(event["id"]):
                print(handle(event), flush=True)
                count += 1
            else:
                print(f"skipped a redelivered event {event['id']}", file=sys.stderr)
            await msg.ack()  # only after the work is done (and recorded)
    await nc.close()
    print(f"handled {count} events", file=sys.stderr)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nats", default=default_nats_url(), help="NATS URL")
    parser.add_argument("--durable", default="example-subscriber", help="the consumer's name")
    parser.add_argument("--since", default=None, help="ISO 8601 start for a new durable")
    parser.add_argument("--state", type=Path, default=Path("subscriber-state.sqlite"))
    parser.add_argument("--ack-wait", type=float, default=30.0, help="seconds before redelivery")
    parser.add_argument(
        "--exit-when-idle", type=float, default=0.0, help="stop after this many quiet seconds"
    )
    return asyncio.run(consume(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
