"""``trajectory.deleted`` in the projection: the trajectory's rows go, a tombstone
stays, and events of a tombstoned trajectory change nothing, in any order and on
any redelivery or replay."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from services.recorder.values import Event, rows_written
from services.recorder.values import utc as _utc
from shared.events.deletion import TrajectoryDeleted

if TYPE_CHECKING:
    from shared.db.pool import Connection

# Children first; the trajectory row last.
_TABLES = (
    "steps",
    "artifacts",
    "labels",
    "archives",
    "evaluations",
    "runbooks",
    "trajectories",
    "event_positions",
)


def is_deletion(event: Event) -> bool:
    return isinstance(event.data, TrajectoryDeleted)


async def apply_deletions(events: Sequence[Event], conn: Connection) -> tuple[set[str], int]:
    """Tombstone and remove the trajectories ``events`` delete; their ids and the
    rows written (tombstones and removed rows: 0 for a deletion applied before)."""
    first: dict[str, Event] = {}
    for event in events:
        if event.trajectory_id not in first or event.id < first[event.trajectory_id].id:
            first[event.trajectory_id] = event
    ids = sorted(first)
    status = await conn.execute(
        """
        INSERT INTO deleted_trajectories (trajectory_id, collection, deleted_at, event_id)
        SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[])
        ON CONFLICT (trajectory_id) DO NOTHING
        """,
        ids,
        [first[i].collection for i in ids],
        [_utc(first[i].data.deleted_at) for i in ids],  # type: ignore[union-attr]
        [first[i].id for i in ids],
    )
    removed = await remove_rows(ids, conn)
    return set(ids), rows_written(status) + removed


async def remove_rows(trajectory_ids: Sequence[str], conn: Connection) -> int:
    """Delete the projection rows of these trajectories; how many went."""
    removed = 0
    for table in _TABLES:
        status = await conn.execute(
            f"DELETE FROM {table} WHERE trajectory_id = ANY($1::text[])", trajectory_ids
        )
        removed += rows_written(status)
    return removed


async def tombstoned(trajectory_ids: Sequence[str], conn: Connection) -> set[str]:
    rows = await conn.fetch(
        "SELECT trajectory_id FROM deleted_trajectories WHERE trajectory_id = ANY($1::text[])",
        list(trajectory_ids),
    )
    return {r["trajectory_id"] for r in rows}
