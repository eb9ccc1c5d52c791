"""Validation of our wire documents against OpenAI's published schemas.

``tests/specs/openai-chat-schemas.json`` is the subset of OpenAI's OpenAPI
document (see its ``info.source``) that the schemas in :data:`ROOTS` reference —
chat completions, models, and the Responses API's ``Response`` and
``ResponseStreamEvent`` — kept in the repository so a fresh clone validates
offline (the full document beside the project, ``../shared/specs``, is the
fallback). ``python -m tests.openapi`` regenerates it from the full document.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

ROOT = Path(__file__).resolve().parent.parent
SUBSET = ROOT / "tests" / "specs" / "openai-chat-schemas.json"
FULL = ROOT.parent / "shared" / "specs" / "openai-openapi.json"
SPEC_CANDIDATES = (SUBSET, FULL)
ROOTS = (
    "CreateChatCompletionRequest",
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "ListModelsResponse",
    "Response",
    "ResponseStreamEvent",
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


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = set()
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                found.add(value.rsplit("/", 1)[-1])
            else:
                found |= _refs(value)
        return found
    if isinstance(node, list):
        return set().union(*(_refs(item) for item in node)) if node else set()
    return set()


def write_subset() -> None:
    """Rewrite :data:`SUBSET` from :data:`FULL`: the :data:`ROOTS` and every schema
    they reference, verbatim."""
    full = json.loads(FULL.read_text())
    schemas = full["components"]["schemas"]
    keep: set[str] = set()
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo += _refs(schemas[name])
    source = (FULL.parent / "openai-openapi.SOURCE").read_text().strip()
    subset = {
        "components": {"schemas": {name: schemas[name] for name in keep}},
        "info": {
            "source": source,
            "title": "Subset of the OpenAI OpenAPI document: chat completion, model and "
            "Responses schemas and what they reference",
        },
        "openapi": full["openapi"],
    }
    SUBSET.write_text(json.dumps(subset, indent=1, sort_keys=True, ensure_ascii=False))


if __name__ == "__main__":
    write_subset()
