"""Redaction of large base64 content before a request is recorded.

Data URLs and bare base64 blobs longer than :data:`LIMIT` characters are replaced
by a marker string naming the media type, the decoded size and its SHA-256, so
a trajectory shows *what* was sent without storing megabytes of image data.
The marker is a string so the recorded document keeps the shape of the request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import Any

LIMIT = 1024

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?);base64,", re.I)
_B64_CHARS = re.compile(r"^[A-Za-z0-9+/_-]+={0,2}$")


def _marker(mime: str, payload: str) -> str:
    try:
        raw = base64.b64decode(
            payload + "=" * (-len(payload) % 4),
            altchars=b"-_" if ("-" in payload or "_" in payload) else None,
        )
    except (binascii.Error, ValueError):
        raw = payload.encode()
    digest = hashlib.sha256(raw).hexdigest()
    return f"[redacted base64: media_type={mime}; bytes={len(raw)}; sha256={digest}]"


def redact_string(value: str) -> str:
    if len(value) <= LIMIT:
        return value
    match = _DATA_URL.match(value)
    if match:
        mime = match.group("mime") or "application/octet-stream"
        return _marker(mime, value[match.end() :])
    compact = value.replace("\n", "").replace("\r", "")
    if _B64_CHARS.match(compact):
        return _marker("application/octet-stream", compact)
    return value


def redact(value: Any) -> Any:
    """Return a copy of a JSON document with large base64 strings replaced."""
    if isinstance(value, str):
        return redact_string(value)
    if isinstance(value, list):
        return [redact(item) for item in value]
    if isinstance(value, dict):
        return {key: redact(item) for key, item in value.items()}
    return value


_NOT_PARAMS = frozenset({"model", "messages", "jetty", "stream", "stream_options"})


def recorded_request(raw: dict[str, Any]) -> dict[str, Any]:
    """What a trajectory keeps of a chat request: model, redacted messages, parameters."""
    return {
        "model": raw.get("model"),
        "messages": redact(raw.get("messages", [])),
        "params": {k: redact(v) for k, v in raw.items() if k not in _NOT_PARAMS},
        "stream": bool(raw.get("stream")),
    }
