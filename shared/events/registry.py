"""Event type names and their payload models; the only place they are paired."""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal, cast

from pydantic import BaseModel, Field, TypeAdapter

from shared.events.annotations import (
    LabelRemoved,
    LabelSet,
    TrajectoryArchived,
    TrajectoryUnarchived,
)
from shared.events.completion import (
    CompletionCancelled,
    CompletionFailed,
    CompletionFinished,
    CompletionRequested,
)
from shared.events.deletion import TrajectoryDeleted
from shared.events.envelope import TypedEnvelope
from shared.events.runbook import (
    ArtifactStored,
    RunbookCancelled,
    RunbookCompleted,
    RunbookEvaluated,
    RunbookFailed,
    RunbookRequested,
    RunbookStarted,
    RunbookStep,
)
from shared.keys import KeyCreated, KeyRevoked, KeyRotated, KeyUpdated

COMPLETION_REQUESTED: Final = "completion.requested"
COMPLETION_FINISHED: Final = "completion.finished"
COMPLETION_FAILED: Final = "completion.failed"
COMPLETION_CANCELLED: Final = "completion.cancelled"
RUNBOOK_REQUESTED: Final = "runbook.requested"
RUNBOOK_STARTED: Final = "runbook.started"
RUNBOOK_COMPLETED: Final = "runbook.completed"
RUNBOOK_FAILED: Final = "runbook.failed"
RUNBOOK_CANCELLED: Final = "runbook.cancelled"
RUNBOOK_STEP: Final = "runbook.step"
RUNBOOK_EVALUATED: Final = "runbook.evaluated"
ARTIFACT_STORED: Final = "artifact.stored"
# Key events: ``trajectory_id`` holds the key's id (shared/keys.py).
KEY_CREATED: Final = "key.created"
KEY_UPDATED: Final = "key.updated"
KEY_ROTATED: Final = "key.rotated"
KEY_REVOKED: Final = "key.revoked"
TRAJECTORY_DELETED: Final = "trajectory.deleted"
LABEL_SET: Final = "label.set"
LABEL_REMOVED: Final = "label.removed"
TRAJECTORY_ARCHIVED: Final = "trajectory.archived"
TRAJECTORY_UNARCHIVED: Final = "trajectory.unarchived"

CompletionData = CompletionRequested | CompletionFinished | CompletionFailed | CompletionCancelled
RunbookData = (
    RunbookRequested
    | RunbookStarted
    | RunbookCompleted
    | RunbookFailed
    | RunbookCancelled
    | RunbookStep
    | RunbookEvaluated
    | ArtifactStored
)
KeyData = KeyCreated | KeyUpdated | KeyRotated | KeyRevoked
AnnotationData = LabelSet | LabelRemoved | TrajectoryArchived | TrajectoryUnarchived
EventData = CompletionData | RunbookData | AnnotationData | KeyData | TrajectoryDeleted

PAYLOADS: Final[dict[str, type[BaseModel]]] = {
    COMPLETION_REQUESTED: CompletionRequested,
    COMPLETION_FINISHED: CompletionFinished,
    COMPLETION_FAILED: CompletionFailed,
    COMPLETION_CANCELLED: CompletionCancelled,
    RUNBOOK_REQUESTED: RunbookRequested,
    RUNBOOK_STARTED: RunbookStarted,
    RUNBOOK_COMPLETED: RunbookCompleted,
    RUNBOOK_FAILED: RunbookFailed,
    RUNBOOK_CANCELLED: RunbookCancelled,
    RUNBOOK_STEP: RunbookStep,
    RUNBOOK_EVALUATED: RunbookEvaluated,
    ARTIFACT_STORED: ArtifactStored,
    KEY_CREATED: KeyCreated,
    KEY_UPDATED: KeyUpdated,
    KEY_ROTATED: KeyRotated,
    KEY_REVOKED: KeyRevoked,
    TRAJECTORY_DELETED: TrajectoryDeleted,
    LABEL_SET: LabelSet,
    LABEL_REMOVED: LabelRemoved,
    TRAJECTORY_ARCHIVED: TrajectoryArchived,
    TRAJECTORY_UNARCHIVED: TrajectoryUnarchived,
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


class RunbookRequestedEnvelope(TypedEnvelope[RunbookRequested]):
    type: Literal["runbook.requested"]


class RunbookStartedEnvelope(TypedEnvelope[RunbookStarted]):
    type: Literal["runbook.started"]


class RunbookCompletedEnvelope(TypedEnvelope[RunbookCompleted]):
    type: Literal["runbook.completed"]


class RunbookFailedEnvelope(TypedEnvelope[RunbookFailed]):
    type: Literal["runbook.failed"]


class RunbookCancelledEnvelope(TypedEnvelope[RunbookCancelled]):
    type: Literal["runbook.cancelled"]


class RunbookStepEnvelope(TypedEnvelope[RunbookStep]):
    type: Literal["runbook.step"]


class RunbookEvaluatedEnvelope(TypedEnvelope[RunbookEvaluated]):
    type: Literal["runbook.evaluated"]


class ArtifactStoredEnvelope(TypedEnvelope[ArtifactStored]):
    type: Literal["artifact.stored"]


class KeyCreatedEnvelope(TypedEnvelope[KeyCreated]):
    type: Literal["key.created"]


class KeyUpdatedEnvelope(TypedEnvelope[KeyUpdated]):
    type: Literal["key.updated"]


class KeyRotatedEnvelope(TypedEnvelope[KeyRotated]):
    type: Literal["key.rotated"]


class KeyRevokedEnvelope(TypedEnvelope[KeyRevoked]):
    type: Literal["key.revoked"]


class TrajectoryDeletedEnvelope(TypedEnvelope[TrajectoryDeleted]):
    type: Literal["trajectory.deleted"]


class LabelSetEnvelope(TypedEnvelope[LabelSet]):
    type: Literal["label.set"]


class LabelRemovedEnvelope(TypedEnvelope[LabelRemoved]):
    type: Literal["label.removed"]


class TrajectoryArchivedEnvelope(TypedEnvelope[TrajectoryArchived]):
    type: Literal["trajectory.archived"]


class TrajectoryUnarchivedEnvelope(TypedEnvelope[TrajectoryUnarchived]):
    type: Literal["trajectory.unarchived"]


AnyEnvelope = (
    RequestedEnvelope
    | FinishedEnvelope
    | FailedEnvelope
    | CancelledEnvelope
    | RunbookRequestedEnvelope
    | RunbookStartedEnvelope
    | RunbookCompletedEnvelope
    | RunbookFailedEnvelope
    | RunbookCancelledEnvelope
    | RunbookStepEnvelope
    | RunbookEvaluatedEnvelope
    | ArtifactStoredEnvelope
    | KeyCreatedEnvelope
    | KeyUpdatedEnvelope
    | KeyRotatedEnvelope
    | KeyRevokedEnvelope
    | TrajectoryDeletedEnvelope
    | LabelSetEnvelope
    | LabelRemovedEnvelope
    | TrajectoryArchivedEnvelope
    | TrajectoryUnarchivedEnvelope
)

_ENVELOPES: Final[TypeAdapter[AnyEnvelope]] = TypeAdapter(
    Annotated[AnyEnvelope, Field(discriminator="type")]
)


_EVENT_DATA: Final = tuple(PAYLOADS.values())


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
    assert isinstance(parsed, _EVENT_DATA)
    return cast(EventData, parsed)


def parse_data_json(event_type: str, raw: bytes) -> EventData:
    """:func:`parse_data` from serialised JSON (a claim-checked payload)."""
    model = PAYLOADS.get(event_type)
    if model is None:
        raise UnknownEventType(event_type)
    parsed = model.model_validate_json(raw)
    assert isinstance(parsed, _EVENT_DATA)
    return cast(EventData, parsed)


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
