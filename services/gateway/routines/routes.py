"""``/api/v1/routines``: runbook requests stored with a cadence.

* ``POST /api/v1/routines`` ``{name, cadence, request, paused?}`` — ``request`` is a
  chat-completions runbook body (``jetty.runbook: true``), checked now exactly as
  it would be when sent (400 with its error otherwise); it may not carry
  ``jetty.secret_params`` (the collection's secrets apply to every run);
* ``GET /api/v1/routines``, ``GET/DELETE /api/v1/routines/{id}``;
* ``POST /api/v1/routines/{id}/pause`` / ``resume`` (scheduled times that passed
  while paused are skipped, not made up) / ``run`` (a run now, outside the
  schedule); ``GET /api/v1/routines/{id}/runs`` — its past runs, newest first.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from aiohttp import web
from nats.errors import Error as NatsError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.gateway import trajectories
from services.gateway.routines.cadence import InvalidCadence, parse
from services.gateway.routines.firing import fire, routine_auth, routine_request
from services.gateway.routines.scheduler import store_of
from services.gateway.routines.store import Routine, new_routine_id
from services.gateway.runbooks import plan_runbook
from services.gateway.state import GATEWAY, Gateway, auth_of
from shared.db.parity import routine_runs
from shared.errors import ApiError, InvalidRequest, NotFound, Unavailable

MAX_BODY = 1024 * 1024


class RoutineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    cadence: str = Field(min_length=1, max_length=200)
    request: dict[str, Any]
    paused: bool = False


def _unavailable() -> Unavailable:
    return Unavailable("The routine store is unavailable; retry.", code="routines_unavailable")


def _next_run(gw: Gateway, routine: Routine) -> float | None:
    if routine.paused:
        return None
    try:
        cadence = parse(routine.cadence, 0)
    except InvalidCadence:
        return None
    since = routine.last_slot if routine.last_slot is not None else routine.created_at
    return cadence.after(since, routine.created_at)


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()


def routine_json(gw: Gateway, routine: Routine) -> dict[str, Any]:
    return {
        "id": routine.id,
        "object": "routine",
        "name": routine.name,
        "cadence": routine.cadence,
        "paused": routine.paused,
        "request": routine.request,
        "created_at": _iso(routine.created_at),
        "next_run_at": _iso(_next_run(gw, routine)),
        "last_run_at": _iso(routine.last_slot),
        "last_trajectory_id": routine.last_trajectory_id,
        "last_error": routine.last_error,
    }


async def _json(request: web.Request) -> Any:
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise InvalidRequest("The request body is too large.", code="body_too_large")
    try:
        return orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        raise InvalidRequest("The request body is not valid JSON.", code="invalid_json") from None


async def create_routine(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    auth = auth_of(request)
    if auth.trajectory_id is not None:
        raise ApiError("A runbook's own token cannot create routines.", status=403,
                       error_type="permission_error", code="token_scope")  # fmt: skip
    try:
        asked = RoutineIn.model_validate(await _json(request))
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise InvalidRequest(f"Invalid routine: {param}: {first['msg']}.", param=param) from None
    try:
        parse(asked.cadence, gw.settings.routines_min_interval)
    except InvalidCadence as exc:
        raise InvalidRequest(
            f"Invalid cadence {asked.cadence!r}: {exc}.", param="cadence", code="invalid_cadence"
        ) from None
    body = asked.request
    jetty = body.get("jetty") if isinstance(body.get("jetty"), dict) else None
    if jetty is None or jetty.get("runbook") is not True:
        raise InvalidRequest(
            "A routine's request must be a runbook request (jetty.runbook: true).",
            param="request.jetty.runbook",
        )
    if "secret_params" in jetty:
        raise InvalidRequest(
            "A routine cannot store secret_params; set collection secrets instead.",
            param="request.jetty.secret_params",
        )
    if jetty.setdefault("collection", auth.collection) != auth.collection:
        raise ApiError("A routine runs in the token's own collection.", status=403,
                       error_type="permission_error", param="request.jetty.collection",
                       code="collection_forbidden")  # fmt: skip
    routine = Routine(
        id=new_routine_id(),
        collection=auth.collection,
        name=asked.name,
        cadence=asked.cadence.strip(),
        paused=asked.paused,
        request=body,
        created_at=time.time(),
    )
    try:  # exactly the checks a run of it gets (errors name request.<param>)
        await plan_runbook(gw, routine_auth(routine), routine_request(body))
    except ApiError as exc:
        exc.param = f"request.{exc.param}" if exc.param else "request"
        raise
    try:
        await store_of(gw).create(routine)
    except (NatsError, TimeoutError):
        raise _unavailable() from None
    return web.json_response(routine_json(gw, routine), status=201)


async def _find(request: web.Request) -> tuple[Gateway, Routine]:
    gw = request.app[GATEWAY]
    routine_id = request.match_info["routine_id"]
    try:
        found = await store_of(gw).get(auth_of(request).collection, routine_id)
    except (NatsError, TimeoutError):
        raise _unavailable() from None
    if found is None:
        raise NotFound(f"No routine with id '{routine_id}'.", param="routine_id", code="not_found")
    return gw, found


async def list_routines(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    try:
        found = await store_of(gw).all(auth_of(request).collection)
    except (NatsError, TimeoutError):
        raise _unavailable() from None
    return web.json_response({"object": "list", "data": [routine_json(gw, r) for r in found]})


async def get_routine(request: web.Request) -> web.Response:
    gw, routine = await _find(request)
    return web.json_response(routine_json(gw, routine))


async def _set_paused(request: web.Request, paused: bool) -> web.Response:
    gw, routine = await _find(request)
    now = time.time()

    def change(current: Routine) -> Routine:
        update: dict[str, Any] = {"paused": paused}
        if current.paused and not paused:
            update["last_slot"] = max(current.last_slot or 0.0, now)  # skip what passed
        return current.model_copy(update=update)

    updated = await store_of(gw).update(routine.collection, routine.id, change)
    if updated is None:
        raise NotFound(f"No routine with id '{routine.id}'.", param="routine_id")
    return web.json_response(routine_json(gw, updated))


async def pause(request: web.Request) -> web.Response:
    return await _set_paused(request, True)


async def resume(request: web.Request) -> web.Response:
    return await _set_paused(request, False)


async def run_now(request: web.Request) -> web.Response:
    gw, routine = await _find(request)
    trajectory_id = await fire(gw, routine, None)
    base = gw.settings.public_url or str(request.url.origin())
    return web.json_response(
        {"routine_id": routine.id, "trajectory_id": trajectory_id,
         "poll_url": f"{base}/api/v1/trajectories/{trajectory_id}"},
        status=202,
    )  # fmt: skip


async def list_runs(request: web.Request) -> web.Response:
    gw, routine = await _find(request)
    try:
        limit = int(request.query.get("limit", "50"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 200:
        raise InvalidRequest("Invalid value for 'limit': 1 to 200.", param="limit")
    await trajectories.projection_caught_up(gw)
    pool = await trajectories.open_pool(gw)
    try:
        runs = await routine_runs(pool, routine.collection, routine.id, limit)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise trajectories.db_unavailable(exc) from None
    body = orjson.dumps({"object": "list", "data": runs}, option=orjson.OPT_UTC_Z)
    return web.Response(body=body, content_type="application/json")


async def delete_routine(request: web.Request) -> web.Response:
    gw, routine = await _find(request)
    await store_of(gw).delete(routine.collection, routine.id)
    return web.json_response({"id": routine.id, "object": "routine", "deleted": True})


def routes() -> list[web.RouteDef]:
    base = "/api/v1/routines/{routine_id}"
    return [
        web.post("/api/v1/routines", create_routine),
        web.get("/api/v1/routines", list_routines),
        web.get(base, get_routine),
        web.delete(base, delete_routine),
        web.post(base + "/pause", pause),
        web.post(base + "/resume", resume),
        web.post(base + "/run", run_now),
        web.get(base + "/runs", list_runs),
    ]
