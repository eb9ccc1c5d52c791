"""Keys (scopes, limits, budgets), trajectory deletion and export, and metrics."""

from __future__ import annotations

from services.gateway.openapi.models import OPEN_OBJECT, ErrorResponse
from services.gateway.openapi.registry import Operation, Param

_KEY = Param("key_id", "path", "a key id (key_…)")
_ADMIN = {
    400: ("invalid request", ErrorResponse),
    403: ("the key lacks the admin scope", ErrorResponse),
    404: ("no such key in the collection", ErrorResponse),
}


def _admin(method: str, path: str, summary: str, ok: str, **kw: object) -> Operation:
    status = 201 if method == "post" and path == "/api/v1/keys" else 200
    return Operation(
        method,
        path,
        summary,
        "keys",
        responses={status: (ok, OPEN_OBJECT), **_ADMIN},
        **kw,  # type: ignore[arg-type]
    )


OPERATIONS = [
    _admin("post", "/api/v1/keys", "Create a key (its secret is shown once)", "the key",
           request=OPEN_OBJECT),
    _admin("get", "/api/v1/keys", "The collection's keys", "a list of keys"),
    _admin("get", "/api/v1/keys/spend", "The keys' spend", "spend per key"),
    _admin("get", "/api/v1/keys/{key_id}", "One key", "the key", params=(_KEY,)),
    _admin("patch", "/api/v1/keys/{key_id}", "Change a key", "the key", params=(_KEY,),
           request=OPEN_OBJECT),
    _admin("delete", "/api/v1/keys/{key_id}", "Revoke a key", "revoked", params=(_KEY,)),
    _admin("post", "/api/v1/keys/{key_id}/rotate", "Issue a new secret", "the key",
           params=(_KEY,)),
    Operation(
        "delete",
        "/api/v1/trajectories/{trajectory_id}",
        "Delete a trajectory (its record, bodies and artifacts)",
        "trajectories",
        params=(Param("trajectory_id", "path"),),
        responses={200: ("deleted", OPEN_OBJECT), 403: ("needs admin", ErrorResponse),
                   404: ("not found", ErrorResponse)},
    ),
    Operation(
        "get",
        "/api/v1/export/trajectories",
        "Export trajectories as JSON lines",
        "trajectories",
        responses={200: ("JSONL", {"application/x-ndjson": {"type": "string"}}),
                   400: ("bad filter", ErrorResponse)},
    ),
    Operation(
        "get",
        "/metrics",
        "Prometheus metrics",
        "health",
        responses={200: ("the text exposition format", {"text/plain": {"type": "string"}})},
        public=True,
    ),
]  # fmt: skip
