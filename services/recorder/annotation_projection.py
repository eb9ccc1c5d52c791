"""Labels and archiving -> ``labels`` and ``archives`` (migration 011).

Same invariants as the rest of the projection: idempotent, independent of
arrival order and batch split, no wall clock. Per (trajectory, key) — per
trajectory for archiving — the later event wins, by ``at`` then event id; a
removed label stays as a row with ``removed = true`` so an older ``label.set``
arriving late cannot bring it back.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from services.recorder.values import Event, rows_written, text, utc
from shared.events.annotations import (
    LabelRemoved,
    LabelSet,
    TrajectoryArchived,
    TrajectoryUnarchived,
)

if TYPE_CHECKING:
    from shared.db.pool import Connection

ANNOTATION_EVENTS = (LabelSet, LabelRemoved, TrajectoryArchived, TrajectoryUnarchived)

_UPSERT_LABELS = """
INSERT INTO labels AS l (trajectory_id, key, collection, value, author, at, removed, event_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                     $6::timestamptz[], $7::boolean[], $8::text[])
ORDER BY 1, 2
ON CONFLICT (trajectory_id, key) DO UPDATE SET
    value = EXCLUDED.value, author = EXCLUDED.author, at = EXCLUDED.at,
    removed = EXCLUDED.removed, event_id = EXCLUDED.event_id
WHERE (EXCLUDED.at, EXCLUDED.event_id COLLATE "C") > (l.at, l.event_id)
"""

_UPSERT_ARCHIVES = """
INSERT INTO archives AS a (trajectory_id, collection, archived, at, event_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::boolean[], $4::timestamptz[], $5::text[])
ORDER BY 1
ON CONFLICT (trajectory_id) DO UPDATE SET
    archived = EXCLUDED.archived, at = EXCLUDED.at, event_id = EXCLUDED.event_id
WHERE (EXCLUDED.at, EXCLUDED.event_id COLLATE "C") > (a.at, a.event_id)
"""


def is_annotation_event(event: Event) -> bool:
    return isinstance(event.data, ANNOTATION_EVENTS)


def _later(a: Event, b: Event) -> bool:
    """Whether ``a`` wins over ``b``."""
    return (_at(a), a.id) > (_at(b), b.id)


def _at(event: Event) -> datetime:
    assert isinstance(event.data, ANNOTATION_EVENTS)
    return utc(event.data.at)


async def apply_annotation_events(events: Sequence[Event], conn: Connection) -> int:
    """Rows written (0: nothing new)."""
    written = 0
    labels: dict[tuple[str, str], Event] = {}
    archives: dict[str, Event] = {}
    for event in events:
        data = event.data
        if isinstance(data, LabelSet | LabelRemoved):
            key = (event.trajectory_id, data.key)
            if key not in labels or _later(event, labels[key]):
                labels[key] = event
        elif isinstance(data, TrajectoryArchived | TrajectoryUnarchived) and (
            event.trajectory_id not in archives or _later(event, archives[event.trajectory_id])
        ):
            archives[event.trajectory_id] = event
    if labels:
        rows = []
        for (trajectory_id, name), event in sorted(labels.items()):
            data = event.data
            assert isinstance(data, LabelSet | LabelRemoved)
            value = text(data.value) if isinstance(data, LabelSet) else ""
            author = text(data.author) if data.author is not None else None
            rows.append(
                (trajectory_id, name, event.collection, value, author, _at(event),
                 isinstance(data, LabelRemoved), event.id)
            )  # fmt: skip
        written += rows_written(await conn.execute(_UPSERT_LABELS, *zip(*rows, strict=True)))
    if archives:
        rows2 = [
            (tid, e.collection, isinstance(e.data, TrajectoryArchived), _at(e), e.id)
            for tid, e in sorted(archives.items())
        ]
        status = await conn.execute(_UPSERT_ARCHIVES, *zip(*rows2, strict=True))
        written += rows_written(status)
    return written
