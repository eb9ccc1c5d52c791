"""Rebuild the projection from the events stream: ``jetty replay --database-url DSN``.

Applies the migrations to the target database, then reads the ``JETTY_EVENTS``
stream from its first message with an ephemeral ordered consumer (no durable
state, nothing acknowledged, the live recorder is untouched) and projects it with
the same code as the live consumer, stopping once it has reached the stream's last
sequence as of the start. Into an empty database this gives the same tables as the
live projection; into a non-empty one it only fills what is missing (idempotent).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from services.recorder import projection
from services.recorder.batch import (
    DeadEvent,
    Decoded,
    Delivery,
    RecorderError,
    TimedClaimStore,
    commit,
    decode,
)
from shared import subjects
from shared.bus import ClaimStore, connect, source_name
from shared.db.pool import apply_migrations, is_transient
from shared.settings import CommonSettings

log = logging.getLogger(__name__)

# The tracking position a replay keeps, apart from the live recorder's.
REPLAY_CONSUMER = "jetty-replay"


class ReplayStalled(RecorderError):
    """The stream stopped delivering before the replay reached its end."""


@dataclass(frozen=True)
class ReplayResult:
    last_seq: int
    messages: int
    dead: int


async def replay(
    nats_url: str,
    database_url: str,
    *,
    batch_size: int = 500,
    stall_timeout: float = 60.0,
    claim_timeout: float = 10.0,
    db_timeout: float = 60.0,
    attempts: int = 8,
) -> ReplayResult:
    """Project every event of the stream into ``database_url``; see the module doc."""
    await apply_migrations(database_url)
    nc = await connect(nats_url, name=source_name("recorder-replay"))
    conn: asyncpg.Connection[asyncpg.Record] | None = None
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(subjects.EVENTS_STREAM)
        except NotFoundError:  # no service ever declared it: nothing happened yet
            log.info("there is no events stream: nothing to replay")
            return ReplayResult(last_seq=0, messages=0, dead=0)
        target = info.state.last_seq
        if info.state.messages == 0:
            log.info("the events stream is empty: nothing to replay")
            return ReplayResult(last_seq=target, messages=0, dead=0)
        conn = await asyncpg.connect(
            database_url,
            timeout=10.0,
            command_timeout=db_timeout,
            server_settings={"application_name": "jetty-replay", **projection.SERVER_SETTINGS},
        )
        sub = await js.subscribe(
            subjects.EVENTS_ALL,
            stream=subjects.EVENTS_STREAM,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        claims = TimedClaimStore(js, claim_timeout)
        seen = dead = 0
        last_seq = 0
        last_progress = time.monotonic()
        try:
            while last_seq < target:
                batch = await _next_batch(sub, batch_size, target)
                if not batch:
                    # Messages deleted from the stream meanwhile can end it early.
                    state = (await js.stream_info(subjects.EVENTS_STREAM)).state
                    if last_seq >= min(target, state.last_seq) or state.messages == 0:
                        break
                    if time.monotonic() - last_progress > stall_timeout:
                        raise ReplayStalled(f"no message for {stall_timeout}s at seq {last_seq}")
                    continue
                last_progress = time.monotonic()
                deliveries = [
                    Delivery(m.metadata.sequence.stream, m.subject, m.data) for m in batch
                ]
                committed = await _project(conn, deliveries, claims, attempts)
                seen += len(deliveries)
                dead += len(committed)
                last_seq = deliveries[-1].stream_seq
        finally:
            await sub.unsubscribe()
        log.info("replayed %d messages up to seq %d (%d dead)", seen, last_seq, dead)
        return ReplayResult(last_seq=last_seq, messages=seen, dead=dead)
    finally:
        if conn is not None:
            await conn.close(timeout=10.0)
        await nc.drain()


async def _next_batch(
    sub: JetStreamContext.PushSubscription, batch_size: int, target: int
) -> list[Msg]:
    """The next message (waiting up to a second) plus whatever else is already
    buffered, without going past ``target``."""
    try:
        first: Msg = await sub.next_msg(timeout=1.0)
    except nats.errors.TimeoutError:
        return []
    batch = [first]
    while (
        len(batch) < batch_size
        and batch[-1].metadata.sequence.stream < target
        and sub.pending_msgs > 0
    ):
        batch.append(await sub.next_msg(timeout=1.0))
    return [m for m in batch if m.metadata.sequence.stream <= target]


async def _project(
    conn: asyncpg.Connection[asyncpg.Record],
    deliveries: list[Delivery],
    claims: ClaimStore,
    attempts: int,
) -> list[DeadEvent]:
    """Decode and commit one batch, with bounded retries (an admin command should
    fail loudly rather than hang for ever)."""
    delay = 0.5
    for attempt in range(1, attempts + 1):
        try:
            decoded: list[Decoded] = []
            dead: list[DeadEvent] = []
            for delivery in deliveries:
                item = await decode(delivery, claims)
                if isinstance(item, Decoded):
                    decoded.append(item)
                else:
                    dead.append(item)
            return await commit(conn, decoded, dead, consumer=REPLAY_CONSUMER)
        except Exception as exc:
            retryable = isinstance(exc, RecorderError) or is_transient(exc)
            if not retryable or attempt == attempts:
                raise
            log.warning("replay batch failed (%r); attempt %d of %d", exc, attempt, attempts)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
    raise AssertionError("unreachable")


def main(argv: Sequence[str] | None = None) -> int:
    """``jetty replay``: rebuild the Postgres projection from the events stream."""
    defaults = CommonSettings()
    parser = argparse.ArgumentParser(
        prog="jetty replay",
        description="Rebuild the trajectory tables from the JetStream events stream "
        "(into an empty database for an identical copy of the live projection).",
    )
    parser.add_argument(
        "--database-url",
        default=defaults.database_url,
        help="target PostgreSQL DSN (default: JETTY_DATABASE_URL)",
    )
    parser.add_argument(
        "--nats-url", default=defaults.nats_url, help="NATS URL (default: JETTY_NATS_URL)"
    )
    parser.add_argument("--batch-size", type=int, default=500, help="events per transaction")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=defaults.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        result = asyncio.run(
            replay(args.nats_url, args.database_url, batch_size=max(1, args.batch_size))
        )
    except (RecorderError, OSError, asyncpg.PostgresError, nats.errors.Error) as exc:
        print(f"jetty replay: failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"replayed {result.messages} events up to stream sequence {result.last_seq}"
        f" ({result.dead} dead)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
