"""Labels and archiving in the projection: the rows and the views are the same
whatever order and batching their events arrive in, a removal is not undone by an
older ``label.set`` arriving late, and the list filters by label and hides
archived trajectories."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from services.recorder.projection import apply
from shared.db.trajectories import get_trajectory, list_trajectories
from shared.events import type_name
from shared.events.annotations import (
    LabelRemoved,
    LabelSet,
    TrajectoryArchived,
    TrajectoryUnarchived,
)
from shared.events.envelope import Envelope
from shared.events.runbook import CheckResult, RunbookEvaluated
from tests.test_projection import finished, requested

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def note(data: Any, trajectory_id: str, event_id: str | None = None) -> Envelope:
    kind = type_name(data)
    return Envelope(
        id=event_id or f"{trajectory_id}-{kind}-{getattr(data, 'key', '')}-{data.at.timestamp()}",
        type=kind,
        source="test",
        time=data.at,
        trajectory_id=trajectory_id,
        collection="acme",
        data=data.model_dump(mode="json"),
    )


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def evaluated(tid: str, round_no: int, passed: bool, event_id: str | None = None) -> Envelope:
    data = RunbookEvaluated(
        task="t", round=round_no, passed=passed, will_retry=not passed, evaluated_at=at(round_no),
        checks=[CheckResult(name="c", kind="command", passed=passed, exit_code=0 if passed else 1,
                            duration_ms=1.0)],
    )  # fmt: skip
    return Envelope(
        id=event_id or f"{tid}-evaluated-{round_no}", type=type_name(data), source="test",
        time=data.evaluated_at, trajectory_id=tid, collection="acme",
        data=data.model_dump(mode="json"),
    )  # fmt: skip


def annotation_events(tid: str) -> list[Envelope]:
    """One event of every type added for Jetty parity."""
    return [
        note(LabelSet(key="k", value="v", at=at(1)), tid),
        note(LabelRemoved(key="k", at=at(2)), tid),
        note(TrajectoryArchived(at=at(3)), tid),
        note(TrajectoryUnarchived(at=at(4)), tid),
        evaluated(tid, 1, False),
    ]


@pytest.fixture
async def conn(migrated_database_url: str) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    connection = await asyncpg.connect(migrated_database_url, timeout=10, command_timeout=30)
    try:
        yield connection
    finally:
        await connection.close(timeout=10)


async def _rows(conn: asyncpg.Connection[asyncpg.Record]) -> list[str]:
    rows = await conn.fetch("SELECT to_jsonb(x)::text AS r FROM labels x ORDER BY 1")
    rows += await conn.fetch("SELECT to_jsonb(x)::text AS r FROM archives x ORDER BY 1")
    return [r["r"] for r in rows]


async def test_the_later_event_wins_in_any_order(
    conn: asyncpg.Connection[asyncpg.Record],
) -> None:
    await apply([requested("tr_a"), finished("tr_a")], conn)
    events = [
        note(LabelSet(key="team", value="data", author="ann", at=at(1)), "tr_a"),
        note(LabelSet(key="team", value="ml", author="bob", at=at(2)), "tr_a"),
        note(LabelSet(key="review", value="ok", at=at(1)), "tr_a"),
        note(LabelRemoved(key="review", at=at(3)), "tr_a"),
        note(TrajectoryArchived(at=at(1)), "tr_a"),
        note(TrajectoryUnarchived(at=at(2)), "tr_a"),
        note(TrajectoryArchived(at=at(5)), "tr_a"),
    ]
    expected: list[str] | None = None
    for order in itertools.islice(itertools.permutations(events), 0, None, 701):
        await conn.execute("TRUNCATE labels, archives")
        half = len(order) // 2
        await apply(list(order[:half]), conn)
        await apply(list(order[half:]), conn)
        await apply(list(order), conn)  # redelivery changes nothing
        rows = await _rows(conn)
        expected = expected or rows
        assert rows == expected
    view = await get_trajectory(conn, "acme", "tr_a")
    assert view is not None
    assert [(label.key, label.value, label.author) for label in view.labels] == [
        ("team", "ml", "bob")
    ]
    assert view.archived is True


async def test_the_list_filters_by_label_and_hides_archived(
    conn: asyncpg.Connection[asyncpg.Record],
) -> None:
    for tid in ("tr_1", "tr_2", "tr_3"):
        await apply([requested(tid), finished(tid)], conn)
    await apply(
        [
            note(LabelSet(key="team", value="data", at=at(1)), "tr_1"),
            note(LabelSet(key="team", value="data", at=at(1)), "tr_2"),
            note(LabelSet(key="env", value="prod", at=at(1)), "tr_2"),
            note(TrajectoryArchived(at=at(1)), "tr_3"),
        ],
        conn,
    )

    async def ids(**filters: Any) -> set[str]:
        page = await list_trajectories(conn, "acme", **filters)
        return {t.trajectory_id for t in page.data}

    assert await ids() == {"tr_1", "tr_2"}
    assert await ids(archived=None) == {"tr_1", "tr_2", "tr_3"}
    assert await ids(archived=True) == {"tr_3"}
    assert await ids(labels=[("team", "data")]) == {"tr_1", "tr_2"}
    assert await ids(labels=[("team", "data"), ("env", "prod")]) == {"tr_2"}
    assert await ids(labels=[("team", "ml")]) == set()


async def test_evaluation_rounds_are_kept_once_each(
    conn: asyncpg.Connection[asyncpg.Record],
) -> None:
    events = [evaluated("tr_e", 1, False), evaluated("tr_e", 2, True),
              evaluated("tr_e", 2, False, event_id="tr_e-zz-duplicate")]  # fmt: skip
    seen = None
    for order in itertools.permutations(events):
        await conn.execute("TRUNCATE evaluations")
        for event in order:
            await apply([event], conn)
        rows = await conn.fetch("SELECT round, passed FROM evaluations ORDER BY round")
        got = [(r["round"], r["passed"]) for r in rows]
        seen = seen or got
        assert got == seen == [(1, False), (2, True)]  # the smaller event id wins round 2
