"""Embeddings on each upstream's own wire, and the mock's deterministic vectors.

* OpenAI and the OpenAI-compatible catalogue: ``POST {base}/embeddings`` with
  ``model``, ``input``, ``dimensions``, ``user`` and ``encoding_format: "float"``;
  the answer is ``{"data": [{"index", "embedding"}], "usage": {"prompt_tokens"}}``.
* Azure OpenAI: the same body at ``…/deployments/{d}/embeddings?api-version=…`` or
  ``…/openai/v1/embeddings`` (see ``azure.py``).
* Gemini: ``POST {root}/models/{m}:batchEmbedContents`` with one
  ``{"model", "content": {"parts": [{"text"}]}, "outputDimensionality"}`` per input;
  the answer is ``{"embeddings": [{"values": […]}]}`` with no token count.
* Cohere v2: ``POST {base}/v2/embed`` with ``model``, ``texts``, ``input_type``
  (``search_document``), ``embedding_types: ["float"]`` and ``output_dimension``;
  the answer is ``{"embeddings": {"float": [[…]]}, "meta": {"billed_units":
  {"input_tokens"}}}``.

Vectors are always asked for as floats; ``base64`` is packed by the proxy.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from services.proxy import estimate
from services.proxy.providers.base import EmbedCall, Embeddings
from services.proxy.providers.http import ErrorMapper, UpstreamHttp, interrupted
from shared.errors import UpstreamError

MOCK_DIMENSIONS = 256


def _malformed(provider: str) -> UpstreamError:
    return UpstreamError(
        f"The upstream provider '{provider}' sent a malformed embeddings response.",
        code="upstream_malformed",
    )


def _vector(value: Any) -> list[float]:
    if not isinstance(value, list) or not all(
        isinstance(x, int | float) and not isinstance(x, bool) for x in value
    ):
        raise TypeError("not a vector")
    return [float(x) for x in value]


def _tokens(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


async def post_read(
    provider: str,
    http: UpstreamHttp,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    on_error: ErrorMapper,
) -> bytes:
    """POST ``body`` and return the whole answer (errors mapped by ``on_error``)."""
    response = await http.post(url, body, headers, on_error)
    try:
        return await response.read()
    except aiohttp.ClientError as exc:
        response.close()
        raise interrupted(provider, exc) from None
    finally:
        response.release()


# --- OpenAI and compatible ---------------------------------------------------------------


def openai_body(call: EmbedCall) -> bytes:
    req = call.request
    doc: dict[str, Any] = {"model": call.model, "input": req.input, "encoding_format": "float"}
    if req.dimensions is not None:
        doc["dimensions"] = req.dimensions
    if req.user is not None:
        doc["user"] = req.user
    return orjson.dumps(doc)


def openai_decode(provider: str, data: bytes, count: int) -> Embeddings:
    try:
        doc = orjson.loads(data)
        rows = sorted(doc["data"], key=lambda row: row["index"])
        vectors = [_vector(row["embedding"]) for row in rows]
        usage = doc.get("usage") or {}
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise _malformed(provider) from None
    if len(vectors) != count:
        raise _malformed(provider)
    model = doc.get("model")
    return Embeddings(
        vectors,
        _tokens(usage.get("prompt_tokens")),
        model if isinstance(model, str) else None,
    )


# --- Gemini ------------------------------------------------------------------------------


def gemini_body(model_path: str, texts: list[str], dimensions: int | None) -> bytes:
    requests: list[dict[str, Any]] = []
    for text in texts:
        item: dict[str, Any] = {"model": model_path, "content": {"parts": [{"text": text}]}}
        if dimensions is not None:
            item["outputDimensionality"] = dimensions
        requests.append(item)
    return orjson.dumps({"requests": requests})


def gemini_decode(provider: str, data: bytes, count: int) -> Embeddings:
    try:
        doc = orjson.loads(data)
        vectors = [_vector(row["values"]) for row in doc["embeddings"]]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise _malformed(provider) from None
    if len(vectors) != count:
        raise _malformed(provider)
    return Embeddings(vectors, None)


# --- Cohere v2 ---------------------------------------------------------------------------


def cohere_body(model: str, texts: list[str], dimensions: int | None) -> bytes:
    doc: dict[str, Any] = {
        "model": model,
        "texts": texts,
        # Stored vectors are the common case; Cohere requires the field on v3+ models.
        "input_type": "search_document",
        "embedding_types": ["float"],
    }
    if dimensions is not None:
        doc["output_dimension"] = dimensions
    return orjson.dumps(doc)


def cohere_decode(provider: str, data: bytes, count: int) -> Embeddings:
    try:
        doc = orjson.loads(data)
        vectors = [_vector(row) for row in doc["embeddings"]["float"]]
        billed = (doc.get("meta") or {}).get("billed_units") or {}
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise _malformed(provider) from None
    if len(vectors) != count:
        raise _malformed(provider)
    return Embeddings(vectors, _tokens(billed.get("input_tokens")))


# --- the mock ----------------------------------------------------------------------------


def mock_vector(text: str, dimensions: int) -> list[float]:
    """A unit vector that depends only on ``text`` and ``dimensions``: SHA-256 in
    counter mode, two bytes per component mapped to [-1, 1], then normalised."""
    seed = text.encode()
    raw = bytearray()
    counter = 0
    while len(raw) < 2 * dimensions:
        raw += hashlib.sha256(counter.to_bytes(4, "big") + seed).digest()
        counter += 1
    values = [(v / 32767.5) - 1.0 for v in struct.unpack(f">{dimensions}H", raw[: 2 * dimensions])]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def mock_embeddings(call: EmbedCall) -> Embeddings:
    req = call.request
    dimensions = req.dimensions or MOCK_DIMENSIONS
    value = req.input
    items: list[str]
    if isinstance(value, str):
        items = [value]
    elif value and isinstance(value[0], int):
        items = [" ".join(str(t) for t in value)]
    else:
        items = [
            item if isinstance(item, str) else " ".join(str(t) for t in item)  # type: ignore[union-attr]
            for item in value
        ]
    tokens = sum(estimate.text_tokens(item) for item in items)
    return Embeddings([mock_vector(item, dimensions) for item in items], tokens, call.model)


def pack_base64(vector: list[float]) -> bytes:
    """OpenAI's ``base64`` encoding: little-endian float32, base64 (ASCII bytes)."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector))
