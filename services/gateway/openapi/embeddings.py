"""``POST /v1/embeddings`` (and ``/embeddings``): OpenAI's embeddings."""

from __future__ import annotations

from typing import Any, Literal

from services.gateway.openapi.models import ErrorResponse, _Open
from services.gateway.openapi.registry import Operation
from shared.openai_embeddings import EmbeddingRequest

_DESCRIPTION = (
    "OpenAI's embeddings: `input` is a string, an array of strings, an array of token "
    "ids or an array of token-id arrays (token ids reach OpenAI-compatible upstreams "
    "only). `encoding_format` `base64` packs each vector as little-endian float32. "
    "`dimensions` is passed on (OpenAI and Azure `dimensions`, Gemini "
    "`outputDimensionality`, Cohere `output_dimension`). `mock/<name>` answers "
    "deterministic unit vectors. Each call is a trajectory with one step of kind "
    "`embedding`; the optional `jetty` block takes `task`, `collection` and `store`."
)


class Embedding(_Open):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class EmbeddingList(_Open):
    """A ``list`` of embeddings; ``jetty_metadata`` names the trajectory."""

    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: dict[str, int]
    jetty_metadata: dict[str, Any] | None = None


def _embeddings(path: str) -> Operation:
    return Operation(
        "post",
        path,
        "Create embeddings",
        "embeddings",
        description=_DESCRIPTION,
        request=EmbeddingRequest,
        responses={
            200: ("the embeddings", EmbeddingList),
            400: ("invalid request (the error names the parameter)", ErrorResponse),
            404: ("unknown model", ErrorResponse),
            413: ("body too large", ErrorResponse),
            429: ("rate limited", ErrorResponse),
            502: ("the provider failed", ErrorResponse),
            503: ("no proxy available", ErrorResponse),
        },
        extra={
            "operationId": "create_embedding" if path.startswith("/v1") else "create_embedding_root"
        },
    )


OPERATIONS = [_embeddings("/v1/embeddings"), _embeddings("/embeddings")]
