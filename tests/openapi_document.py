"""Checking real answers against our own OpenAPI document (``/openapi.json``).

``validate_answer(method, template, status, body, content_type)`` finds the
operation by its path template (aiohttp's canonical form, as in the document)
and validates ``body`` against the schema the document gives for that status
and media type; any test with a real response may call it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from jsonschema import Draft202012Validator

from services.gateway.openapi import document


@cache
def _document() -> dict[str, Any]:
    return document()


def response_schema(method: str, template: str, status: int, content_type: str) -> dict[str, Any]:
    doc = _document()
    operation = doc["paths"][template][method.lower()]
    response = operation["responses"][str(status)]
    media = content_type.split(";", maxsplit=1)[0].strip()
    schema = response["content"][media]["schema"]
    assert isinstance(schema, dict)
    return schema


def validate_answer(
    method: str, template: str, status: int, body: Any, content_type: str = "application/json"
) -> None:
    schema = response_schema(method, template, status, content_type)
    # The schema's "#/components/..." references resolve against this root.
    root = {**schema, "components": _document()["components"]}
    Draft202012Validator(root).validate(body)
