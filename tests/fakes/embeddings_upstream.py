"""One local server speaking the four documented embeddings wire formats, so each
adapter is tested against the request shape its upstream takes and the answer it
gives:

* OpenAI (and every OpenAI-compatible base URL): ``POST /v1/embeddings``, Bearer key;
  ``{"model", "input", "encoding_format", "dimensions", "user"}`` →
  ``{"object": "list", "data": [{"object": "embedding", "index", "embedding"}],
  "model", "usage": {"prompt_tokens", "total_tokens"}}``;
* Azure OpenAI: ``POST /openai/deployments/{d}/embeddings?api-version=…`` (dated) or
  ``POST /openai/v1/embeddings``, ``api-key`` header, the OpenAI body and answer;
* Gemini: ``POST /v1beta/models/{m}:batchEmbedContents``, ``x-goog-api-key``;
  ``{"requests": [{"model": "models/{m}", "content": {"parts": [{"text"}]},
  "outputDimensionality"}]}`` → ``{"embeddings": [{"values"}]}`` (no token count);
* Cohere v2: ``POST /v2/embed``, Bearer key; ``{"model", "texts", "input_type",
  "embedding_types", "output_dimension"}`` → ``{"id", "embeddings": {"float": […]},
  "texts", "meta": {"billed_units": {"input_tokens"}}}``.

Requests are validated strictly (unknown fields, wrong types, a missing key → the
upstream's error shape) and kept in :attr:`FakeEmbeddings.requests`. Vectors are
``[len(text), index, 0.5, …]`` padded to the dimension (default 8), so a test can tell
which input a vector came from.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

DEFAULT_DIMENSIONS = 8
_OPENAI_FIELDS = {"model", "input", "encoding_format", "dimensions", "user"}
_COHERE_FIELDS = {"model", "texts", "input_type", "embedding_types", "output_dimension", "truncate"}
_COHERE_INPUT_TYPES = {"search_document", "search_query", "classification", "clustering", "image"}


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: Any


def vector(text: str, index: int, dimensions: int) -> list[float]:
    values = [float(len(text)), float(index)] + [0.5] * max(0, dimensions - 2)
    return values[:dimensions]


def _error(status: int, doc: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(doc), content_type="application/json")


def _openai_error(status: int, message: str, param: str | None = None) -> web.Response:
    return _error(
        status,
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": param,
                "code": None,
            }
        },
    )


class FakeEmbeddings:
    def __init__(self, key: str = "sk-embed-fake") -> None:
        self.key = key
        self.requests: list[Seen] = []
        self.app = web.Application()
        self.app.router.add_post("/v1/embeddings", self._openai)
        self.app.router.add_post("/openai/v1/embeddings", self._azure_v1)
        self.app.router.add_post("/openai/deployments/{deployment}/embeddings", self._azure_dated)
        self.app.router.add_post("/v1beta/models/{call}", self._gemini)
        self.app.router.add_post("/v2/embed", self._cohere)
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> str:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _read(self, request: web.Request) -> Any:
        body = orjson.loads(await request.read())
        self.requests.append(Seen(request.path_qs, dict(request.headers), body))
        return body

    # --- OpenAI and Azure ---------------------------------------------------------------

    def _openai_answer(self, body: Any) -> web.Response:
        if not isinstance(body, dict) or set(body) - _OPENAI_FIELDS:
            extra = sorted(set(body) - _OPENAI_FIELDS) if isinstance(body, dict) else []
            return _openai_error(400, f"Unrecognized request argument supplied: {extra}")
        if body.get("encoding_format", "float") not in {"float", "base64"}:
            return _openai_error(400, "Invalid encoding_format", "encoding_format")
        value = body.get("input")
        if isinstance(value, str):
            items: list[Any] = [value]
        elif isinstance(value, list) and value and all(isinstance(t, int) for t in value):
            items = [value]
        elif isinstance(value, list) and value:
            items = value
        else:
            return _openai_error(400, "'input' is required", "input")
        dimensions = body.get("dimensions") or DEFAULT_DIMENSIONS
        texts = [item if isinstance(item, str) else "t" * len(item) for item in items]
        tokens = sum(max(1, len(t) // 4) for t in texts)
        return _error(
            200,
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": vector(t, i, dimensions)}
                    for i, t in enumerate(texts)
                ],
                "model": body.get("model"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )

    async def _openai(self, request: web.Request) -> web.Response:
        body = await self._read(request)
        if request.headers.get("Authorization") != f"Bearer {self.key}":
            return _openai_error(401, "Incorrect API key provided.")
        return self._openai_answer(body)

    async def _azure_v1(self, request: web.Request) -> web.Response:
        body = await self._read(request)
        if request.headers.get("api-key") != self.key:
            return _error(401, {"error": {"code": "401", "message": "Access denied"}})
        return self._openai_answer(body)

    async def _azure_dated(self, request: web.Request) -> web.Response:
        body = await self._read(request)
        if request.headers.get("api-key") != self.key:
            return _error(401, {"error": {"code": "401", "message": "Access denied"}})
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}(-preview)?", request.query.get("api-version", "")):
            return _error(404, {"error": {"code": "404", "message": "Resource not found"}})
        return self._openai_answer(body)

    # --- Gemini -------------------------------------------------------------------------

    async def _gemini(self, request: web.Request) -> web.Response:
        body = await self._read(request)
        model, _, method = request.match_info["call"].partition(":")
        if method != "batchEmbedContents":
            return _error(404, {"error": {"code": 404, "status": "NOT_FOUND", "message": "no"}})
        if request.headers.get("x-goog-api-key") != self.key:
            return _error(
                400,
                {
                    "error": {
                        "code": 400,
                        "status": "INVALID_ARGUMENT",
                        "message": "API key not valid.",
                    }
                },
            )
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests or set(body) != {"requests"}:
            return _error(
                400, {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "requests"}}
            )
        out = []
        for i, item in enumerate(requests):
            parts = item.get("content", {}).get("parts", [])
            if item.get("model") != f"models/{model}" or len(parts) != 1 or "text" not in parts[0]:
                return _error(
                    400,
                    {
                        "error": {
                            "code": 400,
                            "status": "INVALID_ARGUMENT",
                            "message": "bad request",
                        }
                    },
                )
            dimensions = item.get("outputDimensionality") or DEFAULT_DIMENSIONS
            out.append({"values": vector(parts[0]["text"], i, dimensions)})
        return _error(200, {"embeddings": out})

    # --- Cohere v2 ----------------------------------------------------------------------

    async def _cohere(self, request: web.Request) -> web.Response:
        body = await self._read(request)
        if request.headers.get("Authorization") != f"Bearer {self.key}":
            return _error(401, {"message": "invalid api token"})
        if not isinstance(body, dict) or set(body) - _COHERE_FIELDS:
            return _error(400, {"message": "invalid request: unknown field"})
        texts = body.get("texts")
        if (
            not isinstance(texts, list)
            or body.get("input_type") not in _COHERE_INPUT_TYPES
            or body.get("embedding_types") != ["float"]
        ):
            return _error(400, {"message": "invalid request: texts, input_type, embedding_types"})
        dimensions = body.get("output_dimension") or DEFAULT_DIMENSIONS
        tokens = sum(max(1, len(t) // 4) for t in texts)
        return _error(
            200,
            {
                "id": str(uuid.uuid4()),
                "embeddings": {"float": [vector(t, i, dimensions) for i, t in enumerate(texts)]},
                "texts": texts,
                "response_type": "embeddings_by_type",
                "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": tokens}},
            },
        )
