"""Every NATS subject, stream and bucket name is spelled here and nowhere else."""

from __future__ import annotations

import re

EVENTS_STREAM = "JETTY_EVENTS"
EVENTS_PREFIX = "jetty.events"
EVENTS_ALL = EVENTS_PREFIX + ".>"

CHAT_REQUEST = "jetty.chat.request"
CHAT_CANCEL = "jetty.chat.cancel"
MODELS_LIST = "jetty.proxy.models"
PROXY_QUEUE = "jetty-proxies"

RECORDER_DURABLE = "jetty-recorder"
TOKENS_BUCKET = "jetty_tokens"
CLAIMS_BUCKET = "jetty_claims"

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def token(name: str) -> str:
    """Turn a free-form name into one valid subject token (no dots, wildcards or spaces)."""
    cleaned = _UNSAFE.sub("_", name)
    return cleaned or "_"


def event_subject(collection: str, event_type: str) -> str:
    """``jetty.events.<collection>.<type>``; the type keeps its dots (``completion.finished``)."""
    return f"{EVENTS_PREFIX}.{token(collection)}.{event_type}"


def collection_events(collection: str) -> str:
    return f"{EVENTS_PREFIX}.{token(collection)}.>"
