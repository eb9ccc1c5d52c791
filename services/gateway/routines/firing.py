"""Firing a routine: its stored request planned and queued like any runbook
request, as its collection, with the run linked to the routine.

A scheduled firing's trajectory id and event id follow from (routine, slot), so a
replica that takes over a half-done firing queues the very same run (the run
state's create fails and JetStream drops the second copy of the event)."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from services.gateway.routines.store import Routine
from services.gateway.runbooks import plan_runbook, queue_run
from services.gateway.state import Gateway
from shared.events.runbook import RoutineLink
from shared.ids import derived_trajectory_id
from shared.openai_chat import ChatCompletionRequest, parse_chat_request
from shared.tokens import TokenRecord


def routine_auth(routine: Routine) -> TokenRecord:
    return TokenRecord(
        collection=routine.collection,
        name=f"routine {routine.id}",
        created_at=datetime.fromtimestamp(routine.created_at, UTC),
    )


def routine_request(raw: dict[str, object]) -> ChatCompletionRequest:
    return parse_chat_request(orjson.dumps(raw))


def slot_trajectory_id(routine_id: str, slot: float) -> str:
    ms = int(slot * 1000)
    return derived_trajectory_id(ms, f"{routine_id}/{ms}".encode())


async def fire(gw: Gateway, routine: Routine, slot: float | None) -> str:
    """Queue one run of ``routine``; its trajectory id. Raises the request's
    :class:`~shared.errors.ApiError` when it no longer validates (a deleted file, a
    model no longer routed)."""
    request = routine_request(routine.request)
    trajectory_id = slot_trajectory_id(routine.id, slot) if slot is not None else None
    plan = await plan_runbook(
        gw,
        routine_auth(routine),
        request,
        trajectory_id=trajectory_id,
        routine=RoutineLink(routine_id=routine.id, slot=slot),
    )
    event_id = f"routine-{routine.id}-{int(slot * 1000)}" if slot is not None else None
    await queue_run(gw, plan, event_id=event_id)
    return plan.trajectory_id
