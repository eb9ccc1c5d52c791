"""Who may manage a collection's secrets: a key of the collection with the
``admin`` scope (services/gateway/scopes.py); a run-scoped token — what an agent
holds — never.
"""

from __future__ import annotations

from shared.errors import ApiError
from shared.tokens import TokenRecord


def require_admin(auth: TokenRecord) -> None:
    if auth.trajectory_id is not None or "admin" not in auth.scopes:
        raise ApiError(
            "Managing secrets needs an admin key of the collection.",
            status=403,
            error_type="permission_error",
            code="admin_required",
        )
