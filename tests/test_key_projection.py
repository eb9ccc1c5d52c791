"""The ``api_keys`` projection: the highest version of a key wins, whatever the
order or the batches its events arrive in; a replay gives the same row."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from services.recorder.projection import apply
from shared.events import Envelope
from shared.events.registry import type_name
from shared.keys import (
    KeyBudget,
    KeyCreated,
    KeyInfo,
    KeyLimits,
    KeyRevoked,
    KeyRotated,
    KeyUpdated,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def key_info(key_id: str, version: int, **changes: object) -> KeyInfo:
    base = KeyInfo(
        id=key_id,
        collection="acme",
        name="ci",
        scopes=("api",),
        allowed_models=("mock/*",),
        limits=KeyLimits(requests_per_minute=10),
        created_at=T0,
        version=version,
    )
    return base.model_copy(update=changes)


def key_event(data: KeyCreated | KeyUpdated | KeyRotated | KeyRevoked, offset: int) -> Envelope:
    kind = type_name(data)
    return Envelope(
        id=f"{data.key.id}-{data.key.version}-{kind}",
        type=kind,
        source="test",
        time=T0 + timedelta(seconds=offset),
        trajectory_id=data.key.id,
        collection=data.key.collection,
        data=data.model_dump(mode="json"),
    )


def key_events_of_each(key_id: str = "key_0001") -> list[Envelope]:
    """One event of every key type, in version order."""
    return [
        key_event(KeyCreated(key=key_info(key_id, 1)), 0),
        key_event(KeyUpdated(key=key_info(key_id, 2, name="renamed", budget=KeyBudget(usd=5))), 1),
        key_event(KeyRotated(key=key_info(key_id, 3, name="renamed"), previous_valid_until=T0), 2),
        key_event(
            KeyRevoked(
                key=key_info(key_id, 4, name="renamed", revoked_at=T0 + timedelta(seconds=3))
            ),
            3,
        ),
    ]


@pytest.fixture
async def conn(migrated_database_url: str) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    connection = await asyncpg.connect(migrated_database_url, timeout=10, command_timeout=30)
    try:
        yield connection
    finally:
        await connection.close(timeout=10)


async def _row(conn: asyncpg.Connection[asyncpg.Record]) -> str:
    return str(await conn.fetchval("SELECT to_jsonb(k)::text FROM api_keys k"))


async def test_any_order_and_batching_gives_the_same_row(
    conn: asyncpg.Connection[asyncpg.Record],
) -> None:
    events = key_events_of_each()
    await apply(events, conn)
    expected = await _row(conn)
    assert '"name": "renamed"' in expected and '"version": 4' in expected
    assert '"revoked_at": "2026-03-01T12:00:03+00:00"' in expected
    assert '"rotated_at": "2026-03-01T12:00:02+00:00"' in expected
    for order in itertools.islice(itertools.permutations(events), 0, 24, 5):
        await conn.execute("TRUNCATE api_keys")
        for event in order:  # one batch per event: against the stored row
            await apply([event], conn)
        assert await _row(conn) == expected
    # A redelivery changes nothing.
    assert await apply(events, conn) == 0
    assert await _row(conn) == expected
