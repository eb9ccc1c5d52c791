"""``trajectory.deleted``: a trajectory was deleted through the API. The
projection removes its rows and keeps a tombstone that makes every other event of
the trajectory a no-op, whatever order or replay brings them in."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class TrajectoryDeleted(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    deleted_at: datetime
    #: who asked (the key's id; never its secret)
    key_id: str | None = None
    #: ``api`` (DELETE /api/v1/trajectories/{id}) or ``retention``
    reason: str = "api"
