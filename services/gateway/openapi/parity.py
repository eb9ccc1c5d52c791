"""The routes around runbooks that mirror the hosted product: OpenAI-style files,
labels and archiving, Jetty's database routes, secrets and routines."""

from __future__ import annotations

from typing import Any

from services.gateway.files_api.store import FileObject
from services.gateway.openapi.models import OPEN_OBJECT, ErrorResponse
from services.gateway.openapi.registry import Body, Operation, Param
from services.gateway.routines.routes import RoutineIn
from services.gateway.trajectory_ops.labels import LabelIn
from shared.secrets import SecretMeta

_TID = Param("trajectory_id", "path", "a trajectory id (tr_…)")
_FILE = Param("file_id", "path", "a file id (file-…)")
_ROUTINE = Param("routine_id", "path")
_SECRET = Param("name", "path", "the secret's name")
_COLLECTION_TASK = (Param("collection", "path"), Param("task", "path"))
_BAD = {400: ("invalid request", ErrorResponse)}
_GONE = {404: ("not found in the collection", ErrorResponse)}


def _list_of(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": item}},
        "required": ["data"],
    }


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _op(
    method: str,
    path: str,
    summary: str,
    tag: str,
    ok: tuple[str, Body | None],
    *,
    status: int = 200,
    params: tuple[Param, ...] = (),
    request: Body | None = None,
    errors: dict[int, tuple[str, Body | None]] | None = None,
) -> Operation:
    return Operation(
        method,
        path,
        summary,
        tag,
        responses={status: ok, **(errors if errors is not None else {**_BAD, **_GONE})},
        params=params,
        request=request,
    )


_UPLOAD = {
    "multipart/form-data": {
        "type": "object",
        "properties": {"file": {"type": "string"}, "purpose": {"type": "string"}},
        "required": ["file"],
    }
}

OPERATIONS = [
    # OpenAI's files API
    _op("post", "/api/v1/files", "Upload a file (OpenAI's files API)", "files",
        ("the file object", FileObject), request=_UPLOAD),
    _op("get", "/api/v1/files", "The collection's files", "files",
        ("a list of file objects", _list_of(_ref("FileObject")))),
    _op("get", "/api/v1/files/{file_id}", "One file object", "files",
        ("the file object", FileObject), params=(_FILE,)),
    _op("get", "/api/v1/files/{file_id}/content", "A file's bytes", "files",
        ("the content", {"application/octet-stream": {"type": "string"}}), params=(_FILE,)),
    _op("delete", "/api/v1/files/{file_id}", "Delete a file", "files",
        ("deleted", OPEN_OBJECT), params=(_FILE,)),
    # labels, archiving, downloads
    _op("post", "/api/v1/trajectories/{trajectory_id}/labels", "Label a trajectory",
        "trajectories", ("the label", OPEN_OBJECT), params=(_TID,), request=LabelIn),
    _op("delete", "/api/v1/trajectories/{trajectory_id}/labels/{key}", "Remove a label",
        "trajectories", ("removed", OPEN_OBJECT), params=(_TID, Param("key", "path"))),
    _op("post", "/api/v1/trajectories/{trajectory_id}/archive", "Archive a trajectory",
        "trajectories", ("archived", OPEN_OBJECT), params=(_TID,)),
    _op("post", "/api/v1/trajectories/{trajectory_id}/unarchive", "Unarchive a trajectory",
        "trajectories", ("unarchived", OPEN_OBJECT), params=(_TID,)),
    _op("get", "/api/v1/trajectories/{trajectory_id}/download", "Every artifact as one zip",
        "runbooks", ("a zip archive", {"application/zip": {"type": "string"}}), params=(_TID,)),
    # Jetty's database routes
    _op("get", "/api/v1/db/trajectories/{collection}/{task}", "A task's trajectories, by page",
        "trajectories", ("a page", OPEN_OBJECT),
        params=(*_COLLECTION_TASK, Param("limit"), Param("page"))),
    _op("get", "/api/v1/db/stats/{collection}/{task}", "A task's statistics", "trajectories",
        ("the statistics", OPEN_OBJECT), params=(*_COLLECTION_TASK, Param("period"))),
    # secrets (write-only)
    _op("get", "/api/v1/secrets", "The collection's secrets (names only)", "secrets",
        ("names and times", _list_of(_ref("SecretMeta")))),
    _op("post", "/api/v1/secrets", "Create or replace a secret", "secrets",
        ("its metadata", SecretMeta), request=OPEN_OBJECT),
    _op("put", "/api/v1/secrets/{name}", "Set a secret", "secrets",
        ("its metadata", SecretMeta), params=(_SECRET,), request=OPEN_OBJECT),
    _op("delete", "/api/v1/secrets/{name}", "Delete a secret", "secrets",
        ("deleted", OPEN_OBJECT), params=(_SECRET,)),
    # routines
    _op("post", "/api/v1/routines", "Create a routine (a runbook request on a cadence)",
        "routines", ("the routine", OPEN_OBJECT), status=201, request=RoutineIn),
    _op("get", "/api/v1/routines", "The collection's routines", "routines",
        ("the routines", _list_of(OPEN_OBJECT))),
    _op("get", "/api/v1/routines/{routine_id}", "One routine", "routines",
        ("the routine", OPEN_OBJECT), params=(_ROUTINE,)),
    _op("delete", "/api/v1/routines/{routine_id}", "Delete a routine", "routines",
        ("deleted", OPEN_OBJECT), params=(_ROUTINE,)),
    _op("post", "/api/v1/routines/{routine_id}/pause", "Pause a routine", "routines",
        ("the routine", OPEN_OBJECT), params=(_ROUTINE,)),
    _op("post", "/api/v1/routines/{routine_id}/resume", "Resume a routine", "routines",
        ("the routine", OPEN_OBJECT), params=(_ROUTINE,)),
    _op("post", "/api/v1/routines/{routine_id}/run", "Fire a routine now", "routines",
        ("the run it started", OPEN_OBJECT), params=(_ROUTINE,)),
    _op("get", "/api/v1/routines/{routine_id}/runs", "A routine's firings", "routines",
        ("its firings", _list_of(OPEN_OBJECT)), params=(_ROUTINE,)),
]  # fmt: skip
