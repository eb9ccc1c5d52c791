"""Event type names and their payload models; the only place they are paired."""

from __future__ import annotations

from typing import Any, Final

from pydantic import BaseModel

from shared.events.completion import (
    CompletionCancelled,
    CompletionFailed,
    CompletionFinished,
    CompletionRequested,
)

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


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of every payload, for subscribers in other languages."""
    return {name: model.model_json_schema() for name, model in PAYLOADS.items()}
