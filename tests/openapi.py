"""Validation of our wire documents against OpenAI's published schemas.

``tests/specs/openai-chat-schemas.json`` is the subset of OpenAI's OpenAPI
document (see its ``info.source``) that the chat-completion schemas reference,
kept in the repository so a fresh clone validates offline (the full document
beside the project, ``../shared/specs``, is the fallback).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

ROOT = Path(__file__).resolve().parent.parent
SPEC_CANDIDATES = (
    ROOT / "tests" / "specs" / "openai-chat-schemas.json",
    ROOT.parent / "shared" / "specs" / "openai-openapi.json",
)


def _nullable_to_null(node: Any) -> Any:
    """The spec is OpenAPI 3.1 but still uses 3.0's ``nullable: true`` in places (e.g.
    a stream choice's ``finish_reason``), which JSON Schema ignores; turn it into
    what it means so real OpenAI documents (``"finish_reason": null``) validate."""
    if isinstance(node, list):
        return [_nullable_to_null(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _nullable_to_null(value) for key, value in node.items()}
    if out.get("nullable") is True:
        del out["nullable"]
        kind = out.get("type")
        if isinstance(kind, str) and not ({"$ref", "anyOf", "oneOf", "allOf"} & out.keys()):
            out["type"] = [kind, "null"]
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
        else:
            return {"anyOf": [out, {"type": "null"}]}
    return out


@cache
def _registry() -> Registry:
    for path in SPEC_CANDIDATES:
        if path.is_file():
            spec = _nullable_to_null(orjson.loads(path.read_bytes()))
            return Registry().with_resource("urn:openai", DRAFT202012.create_resource(spec))
    raise FileNotFoundError(f"OpenAI OpenAPI spec not found in {SPEC_CANDIDATES}")


def validate(schema_name: str, document: Any) -> None:
    schema = {"$ref": f"urn:openai#/components/schemas/{schema_name}"}
    Draft202012Validator(schema, registry=_registry()).validate(document)
