"""Event type names and their payload models; the only place they are paired."""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, Field, TypeAdapter

from shared.events.completion import (
    CompletionCancelled,
    CompletionFailed,
    CompletionFinished,
    CompletionRequested,
)
from shared.events.envelope import TypedEnvelope

COMPLETION_REQUESTED: Final = "completion.requested"
COMPLETION_FINISHED: Final = "completion.finished"
COMPLETION_FAILED: Final = "completion.failed"
COMPLETION_CANCELLED: Final = "completion.cancelled"

EventData = CompletionRequested | CompletionFinished | CompletionFailed | CompletionCancelled

PAYLOADS: Final[dict[str, type[BaseModel]]] = {
    COMPLETION_REQUESTED: CompletionRequested,
    COMPLETION_FINISHED: CompletionFinished,
    COMPLETION_FAILED: CompletionFailed,
    COMPLETION_CANCELLED: CompletionCancelled,
}

TYPE_OF: Final[dict[type[BaseModel], str]] = {model: name for name, model in PAYLOADS.items()}


# One envelope class per type (``type`` is the discriminator), so that decoding an
# event from bytes validates envelope and payload in a single pass. Must list the
# same pairs as PAYLOADS (tested).
class RequestedEnvelope(TypedEnvelope[CompletionRequested]):
    type: Literal["completion.requested"]


class FinishedEnvelope(TypedEnvelope[CompletionFinished]):
    type: Literal["completion.finished"]


class FailedEnvelope(TypedEnvelope[CompletionFailed]):
    type: Literal["completion.failed"]


class CancelledEnvelope(TypedEnvelope[CompletionCancelled]):
    type: Literal["completion.cancelled"]


AnyEnvelope = RequestedEnvelope | FinishedEnvelope | FailedEnvelope | CancelledEnvelope

_ENVELOPES: Final[TypeAdapter[AnyEnvelope]] = TypeAdapter(
    Annotated[AnyEnvelope, Field(discriminator="type")]
)


class UnknownEventType(ValueError):
    pass


def type_name(data: BaseModel) -> str:
    try:
        return TYPE_OF[type(data)]
    except KeyError as exc:
        raise UnknownEventType(type(data).__name__) from exc


def parse_data(event_type: str, raw: dict[str, Any]) -> EventData:
    model = PAYLOADS.get(event_type)
    if model is None:
        raise UnknownEventType(event_type)
    parsed = model.model_validate(raw)
    assert isinstance(
        parsed, CompletionRequested | CompletionFinished | CompletionFailed | CompletionCancelled
    )
    return parsed


def parse_data_json(event_type: str, raw: bytes) -> EventData:
    """:func:`parse_data` from serialised JSON (a claim-checked payload)."""
    model = PAYLOADS.get(event_type)
    if model is None:
        raise UnknownEventType(event_type)
    parsed = model.model_validate_json(raw)
    assert isinstance(
        parsed, CompletionRequested | CompletionFinished | CompletionFailed | CompletionCancelled
    )
    return parsed


def decode_envelope(payload: bytes) -> AnyEnvelope:
    """Validate a serialised event, envelope and payload, in one pass.

    Raises :class:`pydantic.ValidationError` for anything that is not a valid event
    of a known type (including malformed JSON); a caller that needs to know *why*
    can re-check with :class:`~shared.events.envelope.Envelope` and :func:`parse_data`.
    """
    return _ENVELOPES.validate_json(payload)


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of every payload, for subscribers in other languages."""
    return {name: model.model_json_schema() for name, model in PAYLOADS.items()}
