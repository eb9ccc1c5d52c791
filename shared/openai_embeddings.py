"""``POST /v1/embeddings`` in OpenAI's shape: the request model, its validation
(errors name the parameter, as OpenAI's do), and what a trajectory records of it.

``input`` is a string, a list of strings, a list of token ids or a list of token-id
lists (the last two only reach OpenAI-compatible upstreams, which take them as they
are). ``encoding_format`` ``base64`` is done by the proxy: vectors are always asked
for as floats upstream and packed as little-endian float32, as OpenAI packs them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import InvalidRequest
from shared.openai_chat import DEFAULT_TASK, TASK_PATTERN, json_object_body

# OpenAI's own limits: 2048 inputs per request, none of them empty.
MAX_INPUTS = 2048
MAX_DIMENSIONS = 65536

EmbeddingInput = str | list[str] | list[int] | list[list[int]]


class EmbeddingJetty(BaseModel):
    """The ``jetty`` extension on an embeddings request (as on chat, minus runbooks)."""

    model_config = ConfigDict(extra="forbid")

    task: Annotated[str, Field(pattern=TASK_PATTERN)] | None = None
    collection: str | None = None
    # false: keep no input in the trajectory (metadata only).
    store: bool | None = None


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, le=MAX_DIMENSIONS)
    user: str | None = None
    jetty: EmbeddingJetty | None = None

    @property
    def task(self) -> str:
        return self.jetty.task if self.jetty is not None and self.jetty.task else DEFAULT_TASK

    def texts(self) -> list[str] | None:
        """The inputs as strings, or None when they are token ids."""
        value = self.input
        if isinstance(value, str):
            return [value]
        if all(isinstance(item, str) for item in value):
            return [item for item in value if isinstance(item, str)]
        return None

    def count(self) -> int:
        value = self.input
        if isinstance(value, str):
            return 1
        if value and isinstance(value[0], int):
            return 1  # one list of token ids is one input
        return len(value)


def _bad(message: str, param: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def _check_input(value: Any) -> None:
    if isinstance(value, str):
        if not value:
            raise _bad("'input' must not be an empty string.", "input")
        return
    if not isinstance(value, list) or not value:
        raise _bad(
            "'input' must be a non-empty string, array of strings or array of token arrays.",
            "input",
            "invalid_type" if not isinstance(value, list) else "invalid_value",
        )
    if len(value) > MAX_INPUTS:
        raise _bad(f"'input' must have at most {MAX_INPUTS} items, got {len(value)}.", "input")
    kinds = {type(item) for item in value}
    if kinds == {str}:
        for i, item in enumerate(value):
            if not item:
                raise _bad(f"'input[{i}]' must not be an empty string.", f"input[{i}]")
        return
    if kinds == {int}:
        if any(item < 0 for item in value):
            raise _bad("Token ids in 'input' must be non-negative integers.", "input")
        return
    if kinds == {list}:
        for i, item in enumerate(value):
            if not item or not all(type(t) is int and t >= 0 for t in item):
                raise _bad(
                    f"'input[{i}]' must be a non-empty array of non-negative token ids.",
                    f"input[{i}]",
                )
        return
    raise _bad(
        "'input' must be a string, an array of strings, an array of token ids or an "
        "array of token-id arrays (not a mix).",
        "input",
        "invalid_type",
    )


def parse_embedding_request(body: bytes) -> EmbeddingRequest:
    """Parse and validate; raises :class:`InvalidRequest` naming the parameter."""
    raw = json_object_body(body, ("model", "input"))
    _check_input(raw["input"])
    try:
        return EmbeddingRequest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        param = ".".join(str(p) for p in first["loc"]) or "body"
        raise _bad(f"Invalid value for '{param}': {first['msg']}.", param) from None


def recorded_request(
    req: EmbeddingRequest, store: Literal["full", "redacted", "none"]
) -> dict[str, Any]:
    """The request as the trajectory keeps it under the body-storage rule: ``full``
    keeps the input, ``redacted`` its shape (each text's length), ``none`` only how
    many inputs there were."""
    doc: dict[str, Any] = {
        "model": req.model,
        "encoding_format": req.encoding_format,
        "input_count": req.count(),
        "store": store,
    }
    if req.dimensions is not None:
        doc["dimensions"] = req.dimensions
    if req.user is not None:
        doc["user"] = req.user
    if store == "full":
        doc["input"] = req.input
    elif store == "redacted":
        texts = req.texts()
        doc["input"] = (
            [f"[redacted: {len(t)} chars]" for t in texts]
            if texts is not None
            else "[redacted: token ids]"
        )
    return doc
