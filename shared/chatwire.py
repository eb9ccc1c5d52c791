"""The gateway <-> proxy protocol over core NATS request/reply.

Request (subject ``jetty.chat.request``, queue group ``jetty-proxies``)::

    <ChatCall JSON> "\\n" <client request body, verbatim>

The body is empty when ``ChatCall.body_ref`` names a claim-check object.

Replies go to the request's reply inbox as *frames*, each one NATS message whose
first byte is the kind:

``r`` full JSON response (non-streaming) — last frame
``c`` one SSE ``data:`` payload (a ``chat.completion.chunk`` JSON), streaming
``d`` end of stream — last frame
``e`` error: ``ApiError.to_dict()`` JSON — last frame
``k`` keep-alive while the upstream is quiet, so the gateway can tell a slow
      upstream from a dead proxy

An embeddings call (``ChatCall.kind == "embedding"``) carries the
``/v1/embeddings`` body and is answered with one ``r`` frame (or ``e``).

Frames from one proxy arrive in order (core NATS keeps per-publisher order).
Cancellation: the gateway publishes the trajectory id on ``jetty.chat.cancel``;
every proxy listens and the one running it stops the upstream call.
"""

from __future__ import annotations

from enum import Enum
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict

from shared.events.completion import Mode

KEEPALIVE_INTERVAL: Final = 5.0


class ChatCall(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    trajectory_id: str
    collection: str
    task: str
    mode: Mode = "passthrough"
    step_index: int = 0
    # Wall-clock epoch seconds when the gateway received the request; latency is
    # measured from here.
    received_at: float
    stream: bool
    include_usage: bool = False
    ingress: str = "chat.completions"
    body_ref: str | None = None
    # The key that made the call: the proxy adds the call's cost and tokens to its
    # usage (shared/key_usage.py) and records it on the end event.
    key_id: str | None = None
    # The key has a budget or a token limit: its usage is added before the last frame.
    key_metered: bool = False
    # What the trajectory keeps of the bodies (shared/storage_policy.py).
    store: Literal["full", "redacted", "none"] = "full"
    # What the body is: a chat request (``chat.completion`` reply, maybe streamed) or
    # an embeddings request (one ``r`` frame with the ``list`` of embeddings).
    kind: Literal["chat", "embedding"] = "chat"


class Frame(bytes, Enum):
    RESPONSE = b"r"
    CHUNK = b"c"
    DONE = b"d"
    ERROR = b"e"
    KEEPALIVE = b"k"


TERMINAL: Final = frozenset({Frame.RESPONSE, Frame.DONE, Frame.ERROR})


class BadFrame(ValueError):
    pass


def encode_call(call: ChatCall, body: bytes) -> bytes:
    return call.model_dump_json().encode() + b"\n" + body


def decode_call(payload: bytes) -> tuple[ChatCall, bytes]:
    head, sep, body = payload.partition(b"\n")
    if not sep:
        raise BadFrame("chat call without a header line")
    return ChatCall.model_validate_json(head), body


def frame(kind: Frame, payload: bytes = b"") -> bytes:
    return kind.value + payload


def parse_frame(data: bytes) -> tuple[Frame, bytes]:
    if not data:
        raise BadFrame("empty frame")
    try:
        kind = Frame(data[:1])
    except ValueError as exc:
        raise BadFrame(f"unknown frame kind {data[:1]!r}") from exc
    return kind, data[1:]
