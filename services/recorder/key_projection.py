"""The projection of ``key.*`` events into ``api_keys`` (one row per key).

Every key event carries the whole public view of the key and a version that each
change bumps; a row keeps the highest version (ties: the larger event id), so the
result does not depend on the arrival order. ``revoked_at`` and ``rotated_at``
come from the events, never from the clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import orjson

from services.recorder.values import Event, rows_written
from services.recorder.values import utc as _utc
from shared.keys import KeyCreated, KeyInfo, KeyRevoked, KeyRotated, KeyUpdated

if TYPE_CHECKING:
    from shared.db.pool import Connection

KEY_EVENTS = (KeyCreated, KeyUpdated, KeyRotated, KeyRevoked)

_NEWER = "(EXCLUDED.version, EXCLUDED.event_id) > (k.version, k.event_id)"
_LATEST = ("name", "scopes", "expires_at", "allowed_models", "limits", "budget", "metadata")
# The newest version's view replaces the row; the history facts (revoked, rotated)
# merge whichever event carried them.
_UPSERT = f"""
INSERT INTO api_keys AS k (
    key_id, collection, name, scopes, expires_at, allowed_models, limits, budget,
    metadata, created_at, revoked_at, rotated_at, version, event_id)
SELECT * FROM unnest(
    $1::text[], $2::text[], $3::text[], $4::jsonb[], $5::timestamptz[], $6::jsonb[],
    $7::jsonb[], $8::jsonb[], $9::jsonb[], $10::timestamptz[], $11::timestamptz[],
    $12::timestamptz[], $13::int[], $14::text[])
ON CONFLICT (key_id) DO UPDATE SET
    {", ".join(f"{c} = CASE WHEN {_NEWER} THEN EXCLUDED.{c} ELSE k.{c} END" for c in _LATEST)},
    revoked_at = LEAST(EXCLUDED.revoked_at, k.revoked_at),
    rotated_at = GREATEST(EXCLUDED.rotated_at, k.rotated_at),
    event_id = CASE WHEN {_NEWER} THEN EXCLUDED.event_id ELSE k.event_id END,
    version = GREATEST(EXCLUDED.version, k.version)
WHERE {_NEWER}
    OR LEAST(EXCLUDED.revoked_at, k.revoked_at) IS DISTINCT FROM k.revoked_at
    OR GREATEST(EXCLUDED.rotated_at, k.rotated_at) IS DISTINCT FROM k.rotated_at
"""


def is_key_event(event: Event) -> bool:
    return isinstance(event.data, KEY_EVENTS)


def _key(event: Event) -> KeyInfo:
    assert isinstance(event.data, KEY_EVENTS)
    return event.data.key


async def apply_key_events(events: Sequence[Event], conn: Connection) -> int:
    """Project key events; rows written (an event applied before writes nothing:
    the upsert skips a row it would not change)."""
    best: dict[str, Event] = {}
    rotated: dict[str, datetime] = {}
    revoked: dict[str, datetime] = {}
    for event in events:
        key = _key(event)
        current = best.get(key.id)
        if current is None or (key.version, event.id) > (_key(current).version, current.id):
            best[key.id] = event
        # Facts of the key's history, whichever event carries the latest version.
        at = _utc(event.time)
        if isinstance(event.data, KeyRotated):
            rotated[key.id] = max(at, rotated.get(key.id, at))
        if isinstance(event.data, KeyRevoked):
            when = key.revoked_at or at
            revoked[key.id] = min(when, revoked.get(key.id, when))
    rows = []
    for key_id, event in sorted(best.items()):
        data = event.data
        assert isinstance(data, KEY_EVENTS)
        key = data.key
        rows.append(
            (
                key_id,
                key.collection,
                key.name,
                orjson.dumps(key.scopes).decode(),
                key.expires_at,
                orjson.dumps(key.allowed_models).decode()
                if key.allowed_models is not None
                else None,
                key.limits.model_dump_json(),
                key.budget.model_dump_json() if key.budget is not None else None,
                orjson.dumps(key.metadata).decode(),
                key.created_at,
                revoked.get(key_id),
                rotated.get(key_id),
                key.version,
                event.id,
            )
        )
    return rows_written(await conn.execute(_UPSERT, *zip(*rows, strict=True)))
