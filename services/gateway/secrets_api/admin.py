"""Who may manage a collection's secrets.

Until API keys carry scopes, the admin of a collection is the holder of one of
its own (collection) tokens; a run-scoped token — what an agent holds — never is.
Swap :func:`require_admin` for the key-scope check once keys have an ``admin``
scope.
"""

from __future__ import annotations

from shared.errors import ApiError
from shared.tokens import TokenRecord


def require_admin(auth: TokenRecord) -> None:
    if auth.trajectory_id is not None:
        raise ApiError(
            "Managing secrets needs an admin key of the collection.",
            status=403,
            error_type="permission_error",
            code="admin_required",
        )
