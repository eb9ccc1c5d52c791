"""The gateway's OpenAPI 3.1 document (``GET /openapi.json``) and its rendered
reference (``GET /docs``, Swagger UI vendored from npm).

The document is assembled from the :class:`~.registry.Operation` lists of the
modules in :data:`AREAS`, with the request and response schemas generated from
the pydantic models the handlers use. To describe new routes, add entries to an
area's ``OPERATIONS`` (or a module of your own, added here).
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any

import orjson

from services.gateway.openapi.registry import Components, Operation, build

#: Modules (in this package) whose ``OPERATIONS`` make up the document.
AREAS = ("core", "embeddings", "files", "trajectories", "parity", "admin", "webhooks", "reference")

INFO = {
    "title": "Jetty Flows API",
    "version": "1",
    "description": "An OpenAI-compatible endpoint that records every call as a trajectory "
    "and runs coding agents in sandboxes (runbook mode). Errors are OpenAI-shaped: "
    '`{"error": {"message", "type", "param", "code"}}`.',
}


def operations() -> list[Operation]:
    found: list[Operation] = []
    for area in AREAS:
        module = importlib.import_module(f"{__name__}.{area}")
        found.extend(module.OPERATIONS)
    return found


def document() -> dict[str, Any]:
    components = Components()
    from services.gateway.openapi.models import ErrorResponse

    components.model(ErrorResponse)
    return build(operations(), components, INFO)


@cache
def document_bytes() -> bytes:
    return orjson.dumps(document())
