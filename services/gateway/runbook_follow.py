"""``GET /api/v1/trajectories/{id}/events``: a runbook's progress stream again,
from the start or from where a client lost it (``Last-Event-ID``), then live.

The run's events are read from the JetStream stream (an ordered, ephemeral
consumer on the collection's events, from just before the run was requested), so
what happened before the reconnect and what happens after arrive in one order
with no gap. The chunks are the same as the original ``stream: true`` answer's
(:mod:`services.gateway.runbook_progress`), ids included.

* No ``Last-Event-ID``: everything, opening chunk first.
* ``Last-Event-ID: open`` or an event's id: what came after it.
* ``Last-Event-ID: end``: only ``[DONE]`` (the client had it all).
* An id this run never had: 400 ``invalid_last_event_id`` (checked once the
  history is read, before anything is written).
* A run this collection does not have (or whose state has expired): 404.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import cast

from aiohttp import web
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.api import ConsumerConfig, DeliverPolicy

from services.gateway.middleware import TRAJECTORY_HEADER
from services.gateway.runbook_progress import END_ID, OPEN_ID, RunWatch, stream_progress
from services.gateway.state import GATEWAY, Gateway, auth_of
from shared import subjects
from shared.errors import InvalidRequest, NotFound, Unavailable
from shared.events.runbook import RunbookRequested
from shared.ids import is_trajectory_id, trajectory_id_time

HISTORY_TIMEOUT = 10.0
# Clocks of gateways differ a little: start reading a bit before the id's time.
_CLOCK_SLACK = timedelta(seconds=30)


class _Follower(RunWatch):
    """A :class:`RunWatch` fed from the stream rather than core NATS; knows when
    it has read everything that was in the stream when it began."""

    def __init__(self, gw: Gateway, collection: str, trajectory_id: str) -> None:
        # The request is the first event read (first_requested); nothing reads it before.
        super().__init__(gw, collection, trajectory_id, cast(RunbookRequested, None))
        self.caught_up = asyncio.Event()
        self.requested_id = ""

    async def _on_stream(self, msg: Msg) -> None:
        await self._on_event(msg)
        if msg.metadata.num_pending == 0:
            self.caught_up.set()

    async def subscribe(self, since: datetime) -> None:
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=since,
        )
        sub = await self.gw.js.subscribe(
            subjects.collection_events(self.collection),
            ordered_consumer=True,
            config=config,
            cb=self._on_stream,
        )
        self._subs.append(sub)

    async def first_requested(self) -> bool:
        """Take the run's ``runbook.requested`` off the front of the history."""
        try:
            envelope = self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return False
        if not isinstance(envelope.data, RunbookRequested):
            return False
        self.requested = envelope.data
        self.requested_id = envelope.id
        return True


def _no_run(trajectory_id: str) -> NotFound:
    return NotFound(
        f"No runbook run with id '{trajectory_id}'.", param="trajectory_id", code="not_found"
    )


async def follow_events(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    trajectory_id = request.match_info["trajectory_id"]
    if not is_trajectory_id(trajectory_id):
        raise _no_run(trajectory_id)
    collection = auth_of(request).collection
    try:
        state = await gw.runs.get(trajectory_id)
    except (NatsError, TimeoutError):
        raise Unavailable("Run state unavailable; retry.", code="run_state_unavailable") from None
    if state is None or state.collection != collection:
        raise _no_run(trajectory_id)
    last_id = request.headers.get("Last-Event-ID", "").strip() or None
    follower = _Follower(gw, collection, trajectory_id)
    since = datetime.fromtimestamp(trajectory_id_time(trajectory_id), UTC) - _CLOCK_SLACK
    try:
        await follower.subscribe(since)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(follower.caught_up.wait(), HISTORY_TIMEOUT)
        if not await follower.first_requested():
            raise Unavailable(
                "The run's events are not readable yet; retry.", code="events_unavailable"
            )
        if last_id not in (None, OPEN_ID, END_ID) and last_id not in follower.seen_ids:
            raise InvalidRequest(
                f"Last-Event-ID '{last_id}' is not an event of run '{trajectory_id}'.",
                param="Last-Event-ID",
                code="invalid_last_event_id",
            )
        if last_id == follower.requested_id:
            last_id = OPEN_ID  # the opening chunk stands for the request
        base_url = gw.settings.public_url or str(request.url.origin())
        return await stream_progress(
            request,
            gw,
            follower,
            {TRAJECTORY_HEADER: trajectory_id},
            base_url,
            include_usage=True,
            resume_after=last_id,
        )
    finally:
        await follower.close()


def routes() -> list[web.RouteDef]:
    return [web.get("/api/v1/trajectories/{trajectory_id}/events", follow_events)]
