"""What each scope of a key reaches.

* ``api``: the model endpoints of every wire format and the trajectory, file and
  runbook endpoints (reads and writes) of its collection;
* ``read``: reads only (``GET`` of the model list, trajectories, files, runs);
* ``admin``: the collection's keys and spend (``/api/v1/keys``), and reads.

The auth middleware applies :func:`default_scopes` to the routes listed here.
A route not listed checks its own scope with :func:`require_scope`, e.g.
``require_scope(request, "admin")`` at the top of its handler.
"""

from __future__ import annotations

from aiohttp import web

from services.gateway.state import auth_of
from shared.errors import ApiError
from shared.keys import Scope

READS: tuple[Scope, ...] = ("api", "read", "admin")
WRITES: tuple[Scope, ...] = ("api",)
ADMIN: tuple[Scope, ...] = ("admin",)

# The model endpoints (every wire format): calls need "api"; the model list is a read.
MODEL_PATHS = (
    "/v1/chat/completions",
    "/chat/completions",
    "/v1/embeddings",
    "/embeddings",
    "/v1/messages",
    "/v1/responses",
    "/responses",
    "/v1/models",
    "/v1beta/models",
)
# (path prefix, scopes for reads, scopes for writes); the first match wins.
_ROUTE_SCOPES: tuple[tuple[str, tuple[Scope, ...], tuple[Scope, ...]], ...] = (
    ("/api/v1/keys", ADMIN, ADMIN),
    ("/api/v1/secrets", ADMIN, ADMIN),
    ("/api/v1/trajectories", READS, ("api", "admin")),
    ("/api/v1/", READS, WRITES),
)
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def is_model_call(request: web.Request) -> bool:
    """A call that reaches a model (limits apply): POST on a model endpoint."""
    return request.method == "POST" and request.path.startswith(MODEL_PATHS)


def default_scopes(request: web.Request) -> tuple[Scope, ...] | None:
    """The scopes one of which a request needs, or None (the handler decides)."""
    read = request.method in _READ_METHODS
    path = request.path
    if path.startswith(MODEL_PATHS):
        # GET /v1beta/models/{m} lists; POST …:generateContent calls.
        return READS if read else WRITES
    for prefix, reads, writes in _ROUTE_SCOPES:
        if path.startswith(prefix):
            return reads if read else writes
    return None


def has_scope(request: web.Request, *scopes: Scope) -> bool:
    granted = auth_of(request).scopes
    return any(scope in granted for scope in scopes)


def require_scope(request: web.Request, *scopes: Scope) -> None:
    """403 unless the request's key has one of ``scopes``."""
    if not has_scope(request, *scopes):
        raise scope_error(scopes)


def scope_error(scopes: tuple[Scope, ...]) -> ApiError:
    wanted = " or ".join(f"'{s}'" for s in scopes)
    return ApiError(
        f"This API key lacks the scope this route needs ({wanted}).",
        status=403,
        error_type="permission_error",
        code="insufficient_scope",
    )
