"""Labels and archiving of a trajectory: ``POST /api/v1/trajectories/{id}/labels``
``{key, value, author}``, ``DELETE …/labels/{key}``, ``POST …/archive`` and
``POST …/unarchive``.

Each is an event on the trajectory (``label.set``, ``label.removed``,
``trajectory.archived``, ``trajectory.unarchived``); the answer waits (bounded) for
the recorder, so a read right after it sees the change. A trajectory of another
collection is 404, as an unknown one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from nats.errors import Error as NatsError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.gateway import trajectories
from services.gateway.state import GATEWAY, Gateway, auth_of
from shared.db.trajectories import TrajectoryView
from shared.errors import InvalidRequest, NotFound, Unavailable
from shared.events.annotations import (
    LABEL_KEY_PATTERN,
    LabelRemoved,
    LabelSet,
    TrajectoryArchived,
    TrajectoryUnarchived,
)

MAX_BODY = 16 * 1024


class LabelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(pattern=LABEL_KEY_PATTERN)
    value: str = Field(max_length=1024)
    author: str | None = Field(default=None, max_length=256)


async def _body(request: web.Request) -> Any:
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise InvalidRequest("The request body is too large.", code="body_too_large")
    if not raw.strip():
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("The request body is not valid JSON.", code="invalid_json") from None


async def _target(request: web.Request) -> tuple[Gateway, TrajectoryView]:
    gw = request.app[GATEWAY]
    view = await trajectories.read_trajectory(
        gw, auth_of(request).collection, request.match_info["trajectory_id"]
    )
    return gw, view


async def _publish(gw: Gateway, view: TrajectoryView, data: BaseModel) -> None:
    try:
        await gw.publisher.publish(view.collection, view.trajectory_id, data)
    except (NatsError, TimeoutError):
        raise Unavailable(
            "The change could not be recorded; please retry.", code="queue_unavailable"
        ) from None
    await trajectories.projection_caught_up(gw)


def _label_json(data: LabelSet) -> dict[str, Any]:
    return {"key": data.key, "value": data.value, "author": data.author, "at": data.at.isoformat()}


async def add_label(request: web.Request) -> web.Response:
    body = await _body(request)
    try:
        asked = LabelIn.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise InvalidRequest(
            f"Invalid label: {param}: {first['msg']}.", param=param, code="invalid_value"
        ) from None
    gw, view = await _target(request)
    data = LabelSet(key=asked.key, value=asked.value, author=asked.author, at=datetime.now(UTC))
    await _publish(gw, view, data)
    return web.json_response({"trajectory_id": view.trajectory_id, "label": _label_json(data)})


async def remove_label(request: web.Request) -> web.Response:
    gw, view = await _target(request)
    key = request.match_info["key"]
    if key not in {label.key for label in view.labels}:
        raise NotFound(
            f"Trajectory '{view.trajectory_id}' has no label '{key}'.",
            param="key",
            code="not_found",
        )
    author = request.query.get("author")
    await _publish(gw, view, LabelRemoved(key=key, author=author, at=datetime.now(UTC)))
    return web.json_response({"trajectory_id": view.trajectory_id, "key": key, "deleted": True})


async def archive(request: web.Request) -> web.Response:
    gw, view = await _target(request)
    await _publish(gw, view, TrajectoryArchived(at=datetime.now(UTC)))
    return web.json_response({"trajectory_id": view.trajectory_id, "archived": True})


async def unarchive(request: web.Request) -> web.Response:
    gw, view = await _target(request)
    await _publish(gw, view, TrajectoryUnarchived(at=datetime.now(UTC)))
    return web.json_response({"trajectory_id": view.trajectory_id, "archived": False})


def routes() -> list[web.RouteDef]:
    base = "/api/v1/trajectories/{trajectory_id}"
    return [
        web.post(base + "/labels", add_label),
        web.delete(base + "/labels/{key:.+}", remove_label),
        web.post(base + "/archive", archive),
        web.post(base + "/unarchive", unarchive),
    ]
