"""Azure OpenAI: the OpenAI chat-completions wire format on Azure's URLs.

Configuration, under the names of the ``openai`` SDK's ``AzureOpenAI`` client:

==============================  ========================================================
``AZURE_OPENAI_API_KEY``         required; sent as ``api-key: <key>`` (Entra ID tokens,
                                 ``AZURE_OPENAI_AD_TOKEN``, expire hourly: not supported)
``AZURE_OPENAI_ENDPOINT``        required; ``https://<resource>.openai.azure.com`` (a
                                 trailing ``/openai`` or ``/openai/v1`` is ignored; a path
                                 prefix, e.g. an API Management gateway, is kept)
``AZURE_OPENAI_API_VERSION``     chooses the API surface, see below; default ``v1``
(or the SDK's
``OPENAI_API_VERSION``)
``JETTY_AZURE_MODELS``           comma-separated deployment names for ``GET /v1/models``
==============================  ========================================================

The model after ``azure/`` is the *deployment* name. Two surfaces, chosen by the version:

* ``v1`` (default) — ``{endpoint}/openai/v1/chat/completions``, the deployment in the
  body's ``model``, no ``api-version``. Azure's current GA data-plane API ("Latest GA
  release: v1", learn.microsoft.com/azure/ai-foundry/openai/reference; GA since August
  2025 per .../openai/api-version-lifecycle), which takes the full modern parameter set
  (``developer`` messages, ``reasoning_effort``, ``max_completion_tokens``…) without
  monthly version bumps. ``preview`` selects the same surface with
  ``?api-version=preview``.
* a dated version (``2024-10-21``, the last dated GA; or ``YYYY-MM-DD-preview``) — the
  classic ``{endpoint}/openai/deployments/{deployment}/chat/completions?api-version=…``
  route that ``AzureOpenAI`` clients configured with ``OPENAI_API_VERSION`` use. The
  deployment name lands in the URL path, so it must look like an Azure deployment name
  (letters, digits, ``._-``, at most 64) or the call is refused with a 400: no request
  field can change the host or escape the path.

Built on :class:`OpenAICompatProvider` (same body forwarding, pooled session, SSE
parsing, timeouts and error mapping) with Azure's differences on top:

* the URL is chosen per call (the deployment route), the key goes in ``api-key``;
* dated versions older than ``2024-09-01-preview`` reject ``stream_options``, so usage
  is not requested from them (the proxy then estimates it, flagged ``estimated``); those
  older than ``2024-12-01-preview`` know no ``developer`` role, sent as ``system``. Other
  fields pass through as the OpenAI adapter passes them: on an old dated version Azure
  answers 400 "Unrecognized request argument supplied: …" naming the field;
* content filtering: a prompt Azure filters is HTTP 400 ``code: content_filter``
  (``param: prompt``) and stays a 400 ``content_filter`` for the client; a filtered
  answer ends with ``finish_reason: content_filter``, which is already OpenAI's; the
  per-choice ``content_filter_results``/``content_filter_offsets`` and the response's
  ``prompt_filter_results`` pass through as extra fields, except in streams, where
  Azure's leading filter-only chunk (``choices: []``, no ``id``, no usage) is dropped so
  a client never takes it for the usage chunk;
* ``DeploymentNotFound`` (HTTP 404) becomes our 404 ``model_not_found`` on ``model``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import orjson

from services.proxy.providers.base import ChatChunk, EmbedCall, UpstreamCall
from services.proxy.providers.openai_compat import (
    OpenAICompatConfig,
    OpenAICompatProvider,
    Timeouts,
    error_from_status,
)
from shared.errors import ApiError, InvalidRequest, NotFound

NAME = "azure"
SETUP_HINT = "set AZURE_OPENAI_API_KEY and AZURE_OPENAI_ENDPOINT"
BARE_PATTERNS: tuple[str, ...] = ()
# Deployment names are the operator's own; nothing is listed unless configured.
DEFAULT_MODELS: tuple[str, ...] = ()
DEFAULT_API_VERSION = "v1"

_DATED_VERSION = re.compile(r"^(\d{4}-\d{2}-\d{2})(-preview)?$")
# Azure deployment names: letters, digits, '.', '_' and '-', starting with a letter or
# digit, at most 64 characters. Anything else never reaches a URL path.
_DEPLOYMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# First dated versions that accept these: stream_options arrived in 2024-09-01-preview
# (Azure's API lifecycle changelog), the developer role with the o1 release's
# 2024-12-01-preview (absent from the 2024-10-21 GA spec).
_STREAM_OPTIONS_SINCE = "2024-09-01"
_DEVELOPER_ROLE_SINCE = "2024-12-01"


@dataclass(frozen=True, slots=True)
class AzureConfig:
    endpoint: str
    # repr=False: the key must never reach a log line through a repr.
    api_key: str = field(repr=False)
    api_version: str = DEFAULT_API_VERSION
    models: tuple[str, ...] = DEFAULT_MODELS
    timeouts: Timeouts = field(default_factory=Timeouts)
    pool_size: int = 1024
    name: str = NAME


def from_env(
    env: Mapping[str, str], timeouts: Timeouts, pool_size: int
) -> AzureOpenAIProvider | None:
    """The Azure OpenAI provider when endpoint and key are configured."""
    endpoint = env.get("AZURE_OPENAI_ENDPOINT")
    key = env.get("AZURE_OPENAI_API_KEY")
    if not endpoint or not key:
        return None
    version = env.get("AZURE_OPENAI_API_VERSION") or env.get("OPENAI_API_VERSION")
    listed = tuple(m.strip() for m in env.get("JETTY_AZURE_MODELS", "").split(",") if m.strip())
    return AzureOpenAIProvider(
        AzureConfig(
            endpoint=endpoint,
            api_key=key,
            api_version=(version or DEFAULT_API_VERSION).strip(),
            models=listed,
            timeouts=timeouts,
            pool_size=pool_size,
        )
    )


def resource_root(endpoint: str) -> str:
    """``{endpoint}/openai``, the endpoint validated (it is server configuration)."""
    text = endpoint.strip()
    parts = urlsplit(text)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"AZURE_OPENAI_ENDPOINT must be an http(s) URL, got {endpoint!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("AZURE_OPENAI_ENDPOINT must not carry a query, fragment or credentials")
    root = text.rstrip("/").removesuffix("/openai/v1").removesuffix("/openai")
    return root + "/openai"


class AzureOpenAIProvider(OpenAICompatProvider):
    def __init__(self, config: AzureConfig) -> None:
        root = resource_root(config.endpoint)
        version = config.api_version
        dated = _DATED_VERSION.match(version)
        if version not in {"v1", "preview"} and dated is None:
            raise ValueError(
                "AZURE_OPENAI_API_VERSION must be 'v1', 'preview' or a dated version such "
                f"as '2024-10-21', got {version!r}"
            )
        super().__init__(
            OpenAICompatConfig(
                name=config.name,
                base_url=root + "/v1",
                api_key=config.api_key,
                auth_header="api-key",
                auth_scheme="",
                models=config.models,
                timeouts=config.timeouts,
                pool_size=config.pool_size,
            )
        )
        self.api_version = version
        self._root = root
        if dated is None:
            query = "?api-version=preview" if version == "preview" else ""
            self._v1_url: str | None = f"{root}/v1/chat/completions{query}"
            self._stream_options = self._developer_role = True
        else:
            self._v1_url = None
            self._query = "?" + urlencode({"api-version": version})
            self._stream_options = dated.group(1) >= _STREAM_OPTIONS_SINCE
            self._developer_role = dated.group(1) >= _DEVELOPER_ROLE_SINCE

    def url_for(self, deployment: str, operation: str = "chat/completions") -> str:
        """Where a call to ``deployment`` goes (``operation``: ``chat/completions``
        or ``embeddings``)."""
        if self._v1_url is not None:
            return self._v1_url.replace("/chat/completions", "/" + operation, 1)
        if not _DEPLOYMENT.match(deployment):
            raise InvalidRequest(
                f"'{deployment}' is not a valid Azure OpenAI deployment name "
                "(letters, digits, '.', '_' and '-', at most 64 characters).",
                param="model",
                code="invalid_value",
            )
        return f"{self._root}/deployments/{quote(deployment, safe='')}/{operation}{self._query}"

    def _url_for(self, call: UpstreamCall) -> str:
        return self.url_for(call.model)

    def _embed_url_for(self, call: EmbedCall) -> str:
        return self.url_for(call.model, "embeddings")

    def _body(self, call: UpstreamCall, stream: bool) -> bytes:
        if call.body:
            raw: dict[str, Any] = orjson.loads(call.body)
        else:
            raw = call.request.model_dump(mode="json", exclude_unset=True)
        raw.pop("jetty", None)
        raw["model"] = call.model
        if stream:
            raw["stream"] = True
            options = raw.get("stream_options")
            if self._stream_options:
                raw["stream_options"] = {
                    **(options if isinstance(options, dict) else {}),
                    "include_usage": True,
                }
            else:
                raw.pop("stream_options", None)
        if not self._developer_role:
            for message in raw.get("messages") or ():
                if isinstance(message, dict) and message.get("role") == "developer":
                    message["role"] = "system"
        return orjson.dumps(raw)

    def _error(self, status: int, body: bytes, headers: Mapping[str, str]) -> ApiError:
        error = error_from_status(self.name, status, body, headers)
        if status == 404 and error.code == "DeploymentNotFound":
            return NotFound(error.message, param="model", code="model_not_found")
        if error.code == "content_filter":
            # Azure sends ``type: null``; the prompt was refused, which is the client's.
            error.error_type = "invalid_request_error"
            error.param = error.param or "prompt"
        return error

    async def stream(self, call: UpstreamCall) -> AsyncGenerator[ChatChunk, None]:
        async with aclosing(super().stream(call)) as chunks:
            async for chunk in chunks:
                if not chunk.choices and chunk.usage is None:
                    # Azure's leading prompt_filter_results chunk: no id, no choices.
                    continue
                yield chunk
