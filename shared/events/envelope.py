"""The one envelope every event travels in (CloudEvents-like).

``data`` is the typed payload for ``type`` (see :mod:`shared.events.registry`).
When the serialised payload is too large for a NATS message, ``data`` is empty and
``data_ref`` names the claim-check object that holds it.

:class:`Envelope` is the wire contract with ``data`` as plain JSON (its JSON Schema
is what ``jetty schemas`` publishes). :class:`TypedEnvelope` is the same document
with ``data`` validated as its type's payload model, so a consumer decodes an event
from bytes in one validation pass (the per-type classes live in the registry).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

PayloadT = TypeVar("PayloadT", bound=BaseModel)

# ``v``: the version of the payload schema of every current type.
PAYLOAD_VERSION: Final = 1


class Envelope(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(description="unique event id; also the Nats-Msg-Id")
    type: str = Field(description="past-tense fact, e.g. completion.finished")
    source: str = Field(description="producing service, e.g. proxy/<host>-<pid>")
    time: datetime
    trajectory_id: str
    collection: str
    v: int = PAYLOAD_VERSION
    data: dict[str, Any] | None = None
    data_ref: str | None = None


class TypedEnvelope(BaseModel, Generic[PayloadT]):
    """:class:`Envelope` with a typed ``data``; field for field the same document."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    type: str
    source: str
    time: datetime
    trajectory_id: str
    collection: str
    v: int = PAYLOAD_VERSION
    data: PayloadT | None = None
    data_ref: str | None = None
