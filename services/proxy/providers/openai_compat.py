"""Any upstream that speaks the OpenAI chat-completions wire format (OpenAI itself,
and — configured by data in the next milestone — Groq, Mistral, DeepSeek, vLLM,
Ollama…).

The client's JSON is forwarded almost verbatim: ``jetty`` removed, ``model``
rewritten to the upstream's name, and for streams ``stream_options.include_usage``
forced on so the trajectory always gets usage (the worker decides whether the
client sees it). Unknown fields pass through. Only server configuration decides
the URL and the credentials; nothing from the client reaches a header.

Timeouts (see :class:`Timeouts`) are enforced here per phase; the worker bounds
the call as a whole.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Final, Literal
from urllib.parse import urlencode

import aiohttp
import orjson
from pydantic import ValidationError

from services.proxy.providers import embed_wire
from services.proxy.providers.base import (
    ChatChunk,
    ChatResponse,
    EmbedCall,
    Embeddings,
    Provider,
    UpstreamCall,
)

# Re-exported: Timeouts lived here before providers.http, and callers still import it.
from services.proxy.providers.http import Timeouts as Timeouts  # noqa: PLC0414
from services.proxy.providers.http import UpstreamHttp, UpstreamStream, interrupted
from shared.errors import (
    ApiError,
    InvalidRequest,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
)

log = logging.getLogger(__name__)


# Fields the Anthropic and Gemini ingress carry for their native adapters
# (services/gateway/ingress/): meaningful to no OpenAI-compatible API, and rejected
# by the strict ones, so a request that came in as Anthropic or Gemini and is
# routed here must not carry them.
NATIVE_ONLY_FIELDS: Final = (
    "anthropic_beta",
    "thinking",
    "output_config",
    "context_management",
    "inference_geo",
    "cache_control",
)
NATIVE_ONLY_MESSAGE_FIELDS: Final = ("thinking_blocks", "reasoning_content", "cache_control")


def _strip_native_extensions(raw: dict[str, Any]) -> None:
    for name in NATIVE_ONLY_FIELDS:
        raw.pop(name, None)
    messages = raw.get("messages")
    if not isinstance(messages, list):
        return
    for message in messages:
        if not isinstance(message, dict):
            continue
        for name in NATIVE_ONLY_MESSAGE_FIELDS:
            message.pop(name, None)
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict):
                    part.pop("cache_control", None)


@dataclass(frozen=True, slots=True)
class OpenAICompatConfig:
    name: str = "openai"
    base_url: str = "https://api.openai.com/v1"
    # repr=False: the key must never reach a log line through a repr.
    api_key: str | None = field(default=None, repr=False)
    # Azure uses ``api-key: <key>``; most others ``Authorization: Bearer <key>``.
    auth_header: str = "Authorization"
    auth_scheme: str = "Bearer"
    extra_headers: Mapping[str, str] = field(default_factory=dict)
    models: tuple[str, ...] = ()
    timeouts: Timeouts = field(default_factory=Timeouts)
    pool_size: int = 1024
    # Documented differences from OpenAI (``catalogue.Quirks``), applied to every body.
    #: fixed query string on every call (``api-version``…)
    query_params: Mapping[str, str] = field(default_factory=dict)
    #: the only output-limit field the upstream accepts; the other one is renamed
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] | None = None
    #: request fields the upstream rejects, dropped before sending
    drop_params: tuple[str, ...] = ()
    #: ``n`` must be 1: anything else is refused here with a 400
    single_choice: bool = False
    #: the upstream accepts ``stream_options.include_usage`` (else usage is estimated)
    stream_usage: bool = True


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """``retry-after-ms`` (OpenAI), else ``Retry-After`` as seconds or an HTTP date."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            log.debug("unparseable retry-after-ms header %r", raw_ms)
    raw = headers.get("Retry-After")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(raw).timestamp() - time.time())
    except (TypeError, ValueError):
        log.debug("unparseable Retry-After header %r", raw)
        return None


def _error_fields(body: bytes) -> tuple[str | None, str | None, str | None, str | None]:
    """(message, type, param, code) from an error body of any common shape."""
    try:
        doc = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return (text[:500] or None), None, None, None
    if not isinstance(doc, dict):
        return None, None, None, None
    err = doc.get("error", doc)
    if isinstance(err, str):
        return err, None, None, None
    if not isinstance(err, dict):
        return None, None, None, None
    message = err.get("message") or err.get("detail") or doc.get("message")

    def opt(value: Any) -> str | None:
        return None if value is None else str(value)

    return opt(message), opt(err.get("type")), opt(err.get("param")), opt(err.get("code"))


def error_from_status(
    provider: str, status: int, body: bytes, headers: Mapping[str, str]
) -> ApiError:
    """Map an upstream HTTP error to what our client should see."""
    message, err_type, param, code = _error_fields(body)
    if status == 429:
        return RateLimited(
            message or f"The upstream provider '{provider}' is rate limiting requests.",
            code=code or "rate_limit_exceeded",
            retry_after=retry_after_seconds(headers),
        )
    if status in (401, 403):
        # Our provider key failed, not the client's token: never a 401 to the client,
        # and the upstream's message (which may quote part of the key) is not echoed.
        return UpstreamError(
            f"The upstream provider '{provider}' rejected this server's credentials "
            f"(HTTP {status}). This is a server configuration problem.",
            code="upstream_auth_failed",
        )
    if status == 408:
        return UpstreamTimeout(
            f"The upstream provider '{provider}' timed out (HTTP 408).", code="upstream_timeout"
        )
    if 400 <= status < 500:
        return ApiError(
            message or f"The upstream provider '{provider}' rejected the request (HTTP {status}).",
            status=status,
            error_type=err_type or "invalid_request_error",
            param=param,
            code=code,
        )
    return UpstreamError(
        f"The upstream provider '{provider}' failed (HTTP {status})"
        + (f": {message}" if message else "."),
        code="upstream_error",
    )


def error_from_stream(provider: str, payload: Any) -> ApiError:
    """An ``{"error": …}`` object sent inside a 200 response or an SSE stream."""
    message, err_type, param, code = _error_fields(orjson.dumps({"error": payload}))
    return ApiError(
        message or f"The upstream provider '{provider}' reported an error.",
        status=502,
        error_type=err_type or "upstream_error",
        param=param,
        code=code or "upstream_error",
    )


class OpenAICompatProvider(Provider):
    def __init__(self, config: OpenAICompatConfig) -> None:
        self.name = config.name
        self._config = config
        self._url = config.base_url.rstrip("/") + "/chat/completions"
        self._embed_url = config.base_url.rstrip("/") + "/embeddings"
        if config.query_params:
            self._url += "?" + urlencode(dict(config.query_params))
            self._embed_url += "?" + urlencode(dict(config.query_params))
        self._http = UpstreamHttp(config.name, self._url, config.timeouts, config.pool_size)
        headers = {"Content-Type": "application/json", **config.extra_headers}
        if config.api_key:
            scheme = f"{config.auth_scheme} " if config.auth_scheme else ""
            headers[config.auth_header] = scheme + config.api_key
        self._headers = {**headers, "Accept": "application/json"}
        self._stream_headers = {**headers, "Accept": "text/event-stream"}

    def models(self) -> Sequence[str]:
        return self._config.models

    async def start(self) -> None:
        await self._http.start()

    async def aclose(self) -> None:
        await self._http.aclose()

    def _body(self, call: UpstreamCall, stream: bool) -> bytes:
        if call.body:
            raw: dict[str, Any] = orjson.loads(call.body)
        else:
            raw = call.request.model_dump(mode="json", exclude_unset=True)
        raw.pop("jetty", None)
        raw["model"] = call.model
        self._apply_quirks(raw)
        if stream:
            raw["stream"] = True
            options = raw.get("stream_options")
            options = dict(options) if isinstance(options, dict) else {}
            if self._config.stream_usage:
                raw["stream_options"] = {**options, "include_usage": True}
            else:
                options.pop("include_usage", None)
                if options:
                    raw["stream_options"] = options
                else:
                    raw.pop("stream_options", None)
        return orjson.dumps(raw)

    def _apply_quirks(self, raw: dict[str, Any]) -> None:
        _strip_native_extensions(raw)
        config = self._config
        for name in config.drop_params:
            raw.pop(name, None)
        wanted = config.max_tokens_field
        if wanted is not None:
            other = "max_tokens" if wanted == "max_completion_tokens" else "max_completion_tokens"
            value = raw.pop(other, None)
            if value is not None and raw.get(wanted) is None:
                raw[wanted] = value
        if config.single_choice and raw.get("n") not in (None, 1):
            raise InvalidRequest(
                f"The provider '{self.name}' supports only n=1.", param="n", code="invalid_value"
            )

    def _url_for(self, call: UpstreamCall) -> str:
        """Where ``call`` goes: one fixed URL here; an adapter whose URL depends on the
        call (Azure deployments) overrides this. Server configuration only."""
        return self._url

    def _error(self, status: int, body: bytes, headers: Mapping[str, str]) -> ApiError:
        return error_from_status(self.name, status, body, headers)

    async def _send(self, body: bytes, stream: bool, url: str) -> aiohttp.ClientResponse:
        headers = self._stream_headers if stream else self._headers
        return await self._http.post(url, body, headers, self._error)

    def _embed_url_for(self, call: EmbedCall) -> str:
        return self._embed_url

    async def embed(self, call: EmbedCall) -> Embeddings:
        """``POST {base}/embeddings``, the same wire at OpenAI and every compatible."""
        data = await embed_wire.post_read(
            self.name,
            self._http,
            self._embed_url_for(call),
            embed_wire.openai_body(call),
            self._headers,
            self._error,
        )
        return embed_wire.openai_decode(self.name, data, call.request.count())

    async def complete(self, call: UpstreamCall) -> ChatResponse:
        url = self._url_for(call)
        response = await self._send(self._body(call, stream=False), stream=False, url=url)
        try:
            data = await response.read()
        except aiohttp.ClientError as exc:
            response.close()
            raise UpstreamError(
                f"The upstream provider '{self.name}' dropped the response "
                f"({exc.__class__.__name__}).",
                code="upstream_interrupted",
            ) from None
        finally:
            response.release()
        try:
            parsed = ChatResponse.model_validate_json(data)
        except ValidationError:
            raise UpstreamError(
                f"The upstream provider '{self.name}' sent a malformed response.",
                code="upstream_malformed",
            ) from None
        extra = parsed.__pydantic_extra__
        if not parsed.choices and extra and "error" in extra:
            raise error_from_stream(self.name, extra["error"])
        return parsed

    async def stream(self, call: UpstreamCall) -> AsyncGenerator[ChatChunk, None]:
        timeouts = self._config.timeouts
        url = self._url_for(call)
        response = await self._send(self._body(call, stream=True), stream=True, url=url)
        upstream = UpstreamStream(self.name, response, timeouts)
        try:
            finished = False
            async for event in upstream.events():
                if event.data == b"[DONE]":
                    upstream.complete()
                    return
                chunk = self._parse_chunk(event.data)
                if any(c.finish_reason for c in chunk.choices):
                    finished = True
                yield chunk
            # EOF without [DONE]: acceptable only from a server that had finished.
            if not finished or upstream.pending:
                raise interrupted(self.name)
            upstream.complete()
        finally:
            upstream.close()

    def _parse_chunk(self, data: bytes) -> ChatChunk:
        try:
            chunk = ChatChunk.model_validate_json(data)
        except ValidationError:
            raise UpstreamError(
                f"The upstream provider '{self.name}' sent a malformed stream event.",
                code="upstream_malformed",
            ) from None
        extra = chunk.__pydantic_extra__
        if extra and "error" in extra:
            raise error_from_stream(self.name, extra["error"])
        return chunk
