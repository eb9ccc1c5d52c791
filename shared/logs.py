"""Logging set-up shared by the services. Log lines never carry tokens or keys:
the services log ids, statuses and error classes, never headers or bodies.

``JETTY_LOG_FORMAT=json`` (the Kubernetes overlays' default) writes one JSON object
per line: ``time``, ``level``, ``service``, ``logger``, ``message``, and, when the
line was written on behalf of a request, ``trajectory_id``, ``collection``,
``key_id`` and ``trace_id`` (from :data:`LOG_CONTEXT`), plus the ``extra`` fields
a caller passed (the gateway's access log: ``method``, ``route``, ``status``,
``duration_ms``). ``text`` (the default) keeps the one-line human format.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

#: What a log line is about: set by whoever handles a request or a call
#: (``trajectory_id``, ``collection``, ``key_id``, ``trace_id``).
LOG_CONTEXT: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "jetty_log_context", default=None
)

# LogRecord attributes that are not a caller's ``extra``.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def bind(**fields: str | None) -> None:
    """Add fields to this task's log context (a copy: other tasks are unaffected)."""
    current = LOG_CONTEXT.get() or {}
    LOG_CONTEXT.set({**current, **{k: v for k, v in fields.items() if v is not None}})


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = LOG_CONTEXT.get()
        if context:
            line.update(context)
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def setup_logging(service: str, level: str = "INFO", fmt: str | None = None) -> None:
    fmt = (fmt or os.environ.get("JETTY_LOG_FORMAT") or "text").lower()
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - optional on platforms without it
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
