"""The pieces the OpenAPI document is made of, and how they become one document.

Each part of the gateway describes its routes as a list of :class:`Operation`
in a module of this package (``core``, ``files``, ``trajectories``...) listed in
:data:`services.gateway.openapi.AREAS`. A route's request and response bodies
are the pydantic models its handler uses; their JSON Schemas (and those of every
model they refer to) go into ``components.schemas`` under the model's name.

Adding routes: write ``Operation(...)`` entries in your area's module (or a new
module, added to ``AREAS``); ``tests/test_openapi.py`` fails until every route the
app serves has an entry and every entry has a route.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

Schema = dict[str, Any]
REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Param:
    name: str
    where: str = "query"  # path | query | header
    description: str = ""
    schema: Schema = field(default_factory=lambda: {"type": "string"})
    required: bool = False

    def doc(self) -> Schema:
        return {
            "name": self.name,
            "in": self.where,
            "required": self.required or self.where == "path",
            "description": self.description,
            "schema": self.schema,
        }


#: A body: a pydantic model, a raw JSON Schema, or (media type, schema) pairs.
Body = type[BaseModel] | Schema | dict[str, "type[BaseModel] | Schema"]


@dataclass(frozen=True)
class Operation:
    method: str  # get | post | delete ...
    path: str  # aiohttp's canonical form: /api/v1/trajectories/{trajectory_id}
    summary: str
    tag: str
    responses: dict[int, tuple[str, Body | None]]  # status -> (description, body)
    description: str = ""
    request: Body | None = None
    request_required: bool = True
    params: tuple[Param, ...] = ()
    public: bool = False  # no token needed
    extra: Schema = field(default_factory=dict)  # x-... extensions, operationId


class Components:
    """Collects the schemas the operations refer to."""

    def __init__(self) -> None:
        self.schemas: dict[str, Schema] = {}

    def model(self, model: type[BaseModel], mode: str = "serialization") -> Schema:
        schema = model.model_json_schema(ref_template=REF, mode=mode)  # type: ignore[arg-type]
        for name, sub in schema.pop("$defs", {}).items():
            self.schemas.setdefault(name, sub)
        name = model.__name__
        self.schemas.setdefault(name, schema)
        return {"$ref": REF.format(model=name)}

    def body(self, body: Body, mode: str) -> dict[str, Schema]:
        """The ``content`` map of a request or response body."""
        if isinstance(body, type) and issubclass(body, BaseModel):
            return {"application/json": {"schema": self.model(body, mode)}}
        if any(isinstance(key, str) and "/" in key for key in body):
            content: dict[str, Schema] = {}
            for media, schema in body.items():
                if isinstance(schema, type) and issubclass(schema, BaseModel):
                    content[media] = {"schema": self.model(schema, mode)}
                else:
                    content[media] = {"schema": schema}
            return content
        return {"application/json": {"schema": body}}


ERROR_REF = {"$ref": REF.format(model="ErrorResponse")}


def build(operations: list[Operation], components: Components, info: Schema) -> Schema:
    paths: dict[str, dict[str, Schema]] = {}
    for op in operations:
        default_id = op.method + "_" + re.sub(r"[^A-Za-z0-9]+", "_", op.path).strip("_")
        entry: Schema = {
            "summary": op.summary,
            "tags": [op.tag],
            "operationId": op.extra.get("operationId") or default_id,
        }
        if op.description:
            entry["description"] = op.description
        if op.params:
            entry["parameters"] = [p.doc() for p in op.params]
        if op.request is not None:
            entry["requestBody"] = {
                "required": op.request_required,
                "content": components.body(op.request, "validation"),
            }
        responses: Schema = {}
        for status, (description, body) in sorted(op.responses.items()):
            response: Schema = {"description": description}
            if body is not None:
                response["content"] = components.body(body, "serialization")
            responses[str(status)] = response
        if not op.public and "401" not in responses:
            responses["401"] = {
                "description": "missing or invalid token",
                "content": {"application/json": {"schema": ERROR_REF}},
            }
        entry["responses"] = responses
        if op.public:
            entry["security"] = []
        entry.update({k: v for k, v in op.extra.items() if k != "operationId"})
        paths.setdefault(op.path, {})[op.method] = entry
    return {
        "openapi": "3.1.0",
        "info": info,
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(components.schemas.items())),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API token (jetty tokens create); the Anthropic and "
                    "Gemini routes also take it in x-api-key / x-goog-api-key.",
                }
            },
        },
    }
