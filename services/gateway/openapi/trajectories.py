"""Trajectories, runbook runs' cancel, artifacts and resumable progress."""

from __future__ import annotations

from services.gateway.openapi.models import SSE, CancelResult, ErrorResponse, PresignedArtifact
from services.gateway.openapi.registry import Operation, Param
from shared.db.trajectories import TrajectoryPage, TrajectoryView

_ID = Param("trajectory_id", "path", "a trajectory id (tr_…)")
_NOT_FOUND = {404: ("no such trajectory in the token's collection", ErrorResponse)}
_BYTES = {"type": "string", "contentMediaType": "application/octet-stream"}
STATUSES = ("pending", "running", "completed", "failed", "cancelled")
_STORE = {503: ("the trajectory store is unavailable", ErrorResponse)}

OPERATIONS = [
    Operation(
        "get",
        "/api/v1/trajectories",
        "The collection's trajectories, newest first",
        "trajectories",
        params=(
            Param("task"),
            Param(
                "status",
                schema={"enum": ["pending", "running", "completed", "failed", "cancelled"]},
            ),
            Param("model"),
            Param("since", description="ISO 8601 or epoch seconds"),
            Param("limit", schema={"type": "integer", "minimum": 1, "maximum": 200}),
            Param("cursor", description="next_cursor of the previous page"),
        ),
        responses={200: ("a page", TrajectoryPage), 400: ("bad filter", ErrorResponse), **_STORE},
    ),
    Operation(
        "get",
        "/api/v1/trajectories/{trajectory_id}",
        "One trajectory with its steps",
        "trajectories",
        params=(_ID,),
        responses={200: ("the trajectory", TrajectoryView), **_NOT_FOUND, **_STORE},
    ),
    Operation(
        "get",
        "/api/v1/db/trajectory/{collection}/{task}/{trajectory_id}",
        "One trajectory, addressed by collection and task",
        "trajectories",
        params=(Param("collection", "path"), Param("task", "path"), _ID),
        responses={200: ("the trajectory", TrajectoryView), **_NOT_FOUND, **_STORE},
    ),
    Operation(
        "post",
        "/api/v1/trajectories/{trajectory_id}/cancel",
        "Stop a queued or running runbook",
        "runbooks",
        params=(_ID,),
        responses={
            200: ("cancelled", CancelResult),
            202: ("cancelling (the sandbox is stopping)", CancelResult),
            409: ("already ended", ErrorResponse),
            **_NOT_FOUND,
        },
    ),
    Operation(
        "get",
        "/api/v1/trajectories/{trajectory_id}/artifacts/{path}",
        "Download a file a runbook produced",
        "runbooks",
        params=(
            _ID,
            Param("path", "path", "the artifact's path, e.g. results/summary.md"),
            Param("presign", description="1: answer a short-lived presigned URL instead"),
        ),
        responses={
            200: (
                "the file (or, with presign=1, its URL)",
                {
                    "application/octet-stream": _BYTES,
                    "application/json": PresignedArtifact,
                },
            ),
            **_NOT_FOUND,
        },
    ),
    Operation(
        "get",
        "/api/v1/trajectories/{trajectory_id}/events",
        "A runbook's progress stream again, resumable",
        "runbooks",
        description="The same `chat.completion.chunk` SSE events as the `stream: true` answer, "
        "from the start or, with `Last-Event-ID`, from after that event; then live to the end.",
        params=(
            _ID,
            Param("Last-Event-ID", "header", "the last chunk's id: open, an event id or end"),
        ),
        responses={
            200: ("SSE chunks", {"text/event-stream": SSE}),
            400: ("an id this run never had", ErrorResponse),
            **_NOT_FOUND,
        },
    ),
]
