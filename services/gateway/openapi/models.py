"""Response shapes that the handlers build as plain dicts (the OpenAI-shaped chat
answers, the model list, health), written down as pydantic models so the
document has a schema for them. Open (``extra="allow"``): the provider's own
fields pass through."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.errors import ErrorBody


class ErrorResponse(BaseModel):
    """Every error: OpenAI's shape (Anthropic's and Google's on their routes)."""

    model_config = ConfigDict(extra="allow")

    error: ErrorBody | dict[str, Any]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatChoice(_Open):
    index: int
    message: dict[str, Any]
    finish_reason: str | None = None


class ChatCompletion(_Open):
    """A ``chat.completion``; ``jetty_metadata`` carries the trajectory (its id,
    status, usage, cost; for runbooks also artifacts, timing and ``poll_url``)."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: dict[str, Any] | None = None
    jetty_metadata: dict[str, Any] | None = None


class ModelEntry(_Open):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(_Open):
    object: Literal["list"]
    data: list[ModelEntry]


class Health(BaseModel):
    status: str
    nats: bool | None = None


class CancelResult(BaseModel):
    trajectory_id: str
    status: str = Field(description="cancelled, or cancelling while the sandbox stops")


class PresignedArtifact(BaseModel):
    path: str
    url: str
    expires_at: str


SSE = {"type": "string", "description": "Server-sent events (text/event-stream)"}
OPEN_OBJECT: dict[str, Any] = {"type": "object", "additionalProperties": True}
