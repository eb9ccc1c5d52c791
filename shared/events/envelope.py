"""The one envelope every event travels in (CloudEvents-like).

``data`` is the typed payload for ``type`` (see :mod:`shared.events.registry`).
When the serialised payload is too large for a NATS message, ``data`` is empty and
``data_ref`` names the claim-check object that holds it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Envelope(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(description="unique event id; also the Nats-Msg-Id")
    type: str = Field(description="past-tense fact, e.g. completion.finished")
    source: str = Field(description="producing service, e.g. proxy/<host>-<pid>")
    time: datetime
    trajectory_id: str
    collection: str
    v: int = 1
    data: dict[str, Any] | None = None
    data_ref: str | None = None
