"""From stream messages to one committed transaction; shared by the live consumer
and by replay, so both make the same decisions (and therefore the same rows).

Exception tree::

    RecorderError
     └── Retryable          a claim-checked payload cannot be fetched right now
                            (object store unreachable); retry, never drop

Database errors are asyncpg's / OSError, left as they are: the caller retries
what :func:`shared.db.pool.is_transient` calls transient.

A message that can never be projected is not an exception here: it becomes a
:class:`DeadEvent`, written to ``dead_events`` in the same transaction as the rest.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import nats.errors
import orjson
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from services.recorder.projection import Event, apply_parsed
from shared import subjects
from shared.bus import ClaimStore
from shared.db.pool import is_refused_data
from shared.events.envelope import Envelope
from shared.events.registry import (
    PAYLOADS,
    AnyEnvelope,
    decode_envelope,
    parse_data,
    parse_data_json,
)

if TYPE_CHECKING:
    from shared.db.pool import Connection

log = logging.getLogger(__name__)


class RecorderError(Exception):
    pass


class Retryable(RecorderError):
    pass


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message of the events stream, independent of how it was consumed."""

    stream_seq: int
    subject: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class DeadEvent:
    delivery: Delivery
    error: str
    event_id: str | None = None
    event_type: str | None = None
    trajectory_id: str | None = None
    collection: str | None = None


@dataclass(frozen=True, slots=True)
class Decoded:
    delivery: Delivery
    event: Event


class TimedClaimStore(ClaimStore):
    """Claim store whose reads are bounded. The bound sits on the remote read only:
    a timeout scope around every decode would cost more than the decode itself."""

    def __init__(self, js: JetStreamContext, timeout: float) -> None:
        super().__init__(js)
        self._timeout = timeout

    async def get(self, key: str) -> bytes:
        async with asyncio.timeout(self._timeout):
            return await super().get(key)


async def decode(delivery: Delivery, claims: ClaimStore) -> Decoded | DeadEvent:
    """Parse a message, fetching a claim-checked payload from the object store
    (give a :class:`TimedClaimStore` to bound that read).

    Returns a :class:`DeadEvent` for what can never parse; raises :class:`Retryable`
    when the claim cannot be fetched right now.
    """
    try:
        # One validation pass from bytes to the typed envelope and payload.
        envelope = decode_envelope(delivery.payload)
    except ValidationError as exc:
        return _diagnose(delivery, exc)
    data = envelope.data
    if data is None:
        if not envelope.data_ref:
            return _dead(delivery, envelope, f"event {envelope.id} has no data")
        try:
            raw = await claims.get(envelope.data_ref)
        except NotFoundError as exc:  # the claim object is gone for good
            return _dead(delivery, envelope, f"claim check object missing: {exc}")
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            # Timeouts, NATS reconnecting: the object store is not reachable right now.
            raise Retryable(f"claim check fetch failed: {exc!r}") from exc
        try:
            data = parse_data_json(envelope.type, raw)
        except ValidationError as exc:
            return _dead(delivery, envelope, f"invalid {envelope.type} payload: {exc}")
    return Decoded(delivery, Event.of(envelope, data))


def _dead(delivery: Delivery, envelope: Envelope | AnyEnvelope, error: str) -> DeadEvent:
    return DeadEvent(
        delivery,
        error,
        event_id=envelope.id,
        event_type=envelope.type,
        trajectory_id=envelope.trajectory_id,
        collection=envelope.collection,
    )


def _diagnose(delivery: Delivery, error: ValidationError) -> DeadEvent:
    """Say why a message failed the one-pass decode: not an envelope at all, an
    unknown type, or an invalid payload. Runs only for messages that are dead."""
    try:
        envelope = Envelope.model_validate_json(delivery.payload)
    except ValidationError as exc:
        return _dead_from_raw(delivery, f"undecodable event: {exc}")
    if envelope.type not in PAYLOADS:
        return _dead(delivery, envelope, f"unknown event type {envelope.type!r}")
    if envelope.data is not None:
        try:
            parse_data(envelope.type, envelope.data)
        except ValidationError as exc:
            return _dead(delivery, envelope, f"invalid {envelope.type} payload: {exc}")
    # Both decodings must agree; if they ever do not, the one-pass verdict stands.
    return _dead(delivery, envelope, f"undecodable event: {error}")


def _dead_from_raw(delivery: Delivery, error: str) -> DeadEvent:
    # Salvage what identifies the event, for whoever inspects dead_events.
    fields: dict[str, str | None] = {}
    try:
        raw = orjson.loads(delivery.payload)
    except orjson.JSONDecodeError:
        raw = None
    if isinstance(raw, dict):
        for key in ("id", "type", "trajectory_id", "collection"):
            value = raw.get(key)
            fields[key] = value if isinstance(value, str) else None
    return DeadEvent(
        delivery,
        error,
        event_id=fields.get("id"),
        event_type=fields.get("type"),
        trajectory_id=fields.get("trajectory_id"),
        collection=fields.get("collection"),
    )


async def commit(
    conn: Connection,
    decoded: Sequence[Decoded],
    dead: Sequence[DeadEvent],
    consumer: str = subjects.RECORDER_DURABLE,
) -> list[DeadEvent]:
    """Project ``decoded`` and record ``dead`` in one transaction, with the
    positions of the messages and ``consumer``'s tracking position.

    If the database refuses some event's data (SQLSTATE class 22/23), the batch is
    retried one event per transaction so that one bad event cannot block the rest;
    the refused ones join the dead. Returns every dead event recorded. Transient
    database errors propagate (as asyncpg / OS errors) and nothing is lost: the
    retry applies the batch again, and what an earlier attempt committed writes
    nothing the second time (the projection is idempotent by its rows).
    """
    try:
        async with conn.transaction():
            gone = await record_positions(decoded, dead, conn, consumer)
            await apply_parsed([d.event for d in decoded], conn, tombstoned=gone)
            await record_dead(dead, conn)
        return list(dead)
    except Exception as exc:
        if not is_refused_data(exc):
            raise
        log.warning("batch refused by the database (%s); isolating the bad event(s)", exc)
    all_dead = list(dead)
    kept: list[Decoded] = []
    for item in decoded:
        try:
            await apply_parsed([item.event], conn)
            kept.append(item)
        except Exception as exc:
            if not is_refused_data(exc):
                raise
            event = item.event
            log.error("event %s (seq %d) refused: %s", event.id, item.delivery.stream_seq, exc)
            all_dead.append(
                DeadEvent(
                    item.delivery,
                    f"refused by the database: {exc}",
                    event_id=event.id,
                    event_type=event.type,
                    trajectory_id=event.trajectory_id,
                    collection=event.collection,
                )
            )
    async with conn.transaction():
        await record_positions(kept, all_dead, conn, consumer)
        await record_dead(all_dead, conn)
    return all_dead


# One round trip for the batch's bookkeeping: where each event is on the stream
# (so a deletion can remove its message), the consumer's tracking position (the
# highest stream sequence it committed; it only ever grows, so a batch committed
# after a later one, a NAKed message coming back, leaves it where it is), and
# which of the batch's trajectories are deleted (the projection skips them).
_RECORD_POSITIONS = """
WITH positions AS (
    INSERT INTO event_positions (trajectory_id, stream_seq, event_id)
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[])
    ORDER BY 1, 2
    ON CONFLICT (trajectory_id, stream_seq) DO NOTHING
), tracking AS (
    INSERT INTO tracking_positions AS p (consumer, stream, position)
    VALUES ($4, $5, $6)
    ON CONFLICT (consumer, stream) DO UPDATE SET position = EXCLUDED.position
    WHERE EXCLUDED.position > p.position
)
SELECT trajectory_id FROM deleted_trajectories WHERE trajectory_id = ANY($1::text[])
"""


async def record_positions(
    decoded: Sequence[Decoded], dead: Sequence[DeadEvent], conn: Connection, consumer: str
) -> set[str]:
    """Each event's stream sequence and ``consumer``'s tracking position; returns
    which of the decoded events' trajectories are deleted (tombstoned)."""
    seqs = [d.delivery.stream_seq for d in decoded] + [d.delivery.stream_seq for d in dead]
    if not seqs:
        return set()
    rows = await conn.fetch(
        _RECORD_POSITIONS,
        [d.event.trajectory_id for d in decoded],
        [d.delivery.stream_seq for d in decoded],
        [d.event.id for d in decoded],
        consumer,
        subjects.EVENTS_STREAM,
        max(seqs),
    )
    return {r["trajectory_id"] for r in rows}


async def record_dead(dead: Sequence[DeadEvent], conn: Connection) -> None:
    if not dead:
        return
    await conn.executemany(
        """
        INSERT INTO dead_events (
            stream_seq, subject, event_id, event_type, trajectory_id, collection,
            payload, error
        ) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        ON CONFLICT (stream_seq) DO NOTHING
        """,
        [
            (
                d.delivery.stream_seq,
                _clean(d.delivery.subject),
                _clean_opt(d.event_id),
                _clean_opt(d.event_type),
                _clean_opt(d.trajectory_id),
                _clean_opt(d.collection),
                d.delivery.payload,
                _clean(d.error),
            )
            for d in dead
        ],
    )
    for d in dead:
        log.error(
            "dead event at stream seq %d (%s, id %s): %s",
            d.delivery.stream_seq,
            d.delivery.subject,
            d.event_id,
            d.error,
        )


def _clean(value: str) -> str:
    return value.replace("\x00", "\ufffd")


def _clean_opt(value: str | None) -> str | None:
    return None if value is None else _clean(value)
