"""Provider adapters behind the proxy, and the one place that builds them from settings.

Adding a provider: implement :class:`~services.proxy.providers.base.Provider`
(translation only; the worker does the rest), build it in :func:`build_providers`
when its configuration is present, and give the router its bare-name patterns.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from services.proxy.catalogue import Catalogue, ProviderConfig, load_catalogue, provider_statuses
from services.proxy.providers import anthropic, azure, cohere, gemini
from services.proxy.providers.base import Provider
from services.proxy.providers.mock import MockProvider
from services.proxy.providers.openai_compat import (
    OpenAICompatConfig,
    OpenAICompatProvider,
    Timeouts,
)
from services.proxy.settings import OPENAI_DEFAULT_BASE_URL, ProxySettings

__all__ = ["NATIVE_ADAPTERS", "Provider", "build_providers", "catalogue_provider"]

log = logging.getLogger(__name__)

# Native adapters: each module exposes NAME, BARE_PATTERNS, DEFAULT_MODELS,
# SETUP_HINT and from_env(env, timeouts, pool_size) -> Provider | None.
NATIVE_ADAPTERS = (anthropic, gemini, cohere, azure)


def catalogue_provider(
    config: ProviderConfig, timeouts: Timeouts, pool_size: int
) -> OpenAICompatProvider:
    """One configured catalogue entry as an adapter: its own pool, its resolved base
    URL and key header, and the quirks that are body edits."""
    entry = config.provider
    assert config.base_url is not None  # configured
    quirks = entry.quirks
    header = entry.auth_header if entry.auth == "header" else "Authorization"
    return OpenAICompatProvider(
        OpenAICompatConfig(
            name=entry.name,
            base_url=config.base_url,
            api_key=config.api_key if entry.auth != "none" else None,
            auth_header=header or "Authorization",
            auth_scheme="Bearer" if entry.auth == "bearer" else "",
            # The catalogue has no model lists: nothing is listed (see docs/routing.md).
            models=(),
            timeouts=timeouts,
            pool_size=pool_size,
            query_params=quirks.query_params,
            max_tokens_field=quirks.max_tokens_field,
            drop_params=quirks.unsupported_params,
            single_choice=quirks.single_choice,
            stream_usage=quirks.stream_usage,
        )
    )


def build_providers(
    settings: ProxySettings,
    env: Mapping[str, str] | None = None,
    catalogue: Catalogue | None = None,
) -> list[Provider]:
    providers: list[Provider] = [MockProvider(settings.mock_models)]
    if settings.openai_configured:
        key = settings.openai_api_key
        providers.append(
            OpenAICompatProvider(
                OpenAICompatConfig(
                    name="openai",
                    base_url=settings.openai_base_url or OPENAI_DEFAULT_BASE_URL,
                    api_key=key.get_secret_value() if key is not None else None,
                    models=settings.openai_models,
                    # OpenAI has no top_k (Anthropic's and Gemini's sampling knob,
                    # which their ingress formats carry) and rejects it.
                    drop_params=("top_k",),
                    timeouts=Timeouts(
                        connect=settings.upstream_connect_timeout,
                        first_byte=settings.upstream_first_byte_timeout,
                        read=settings.upstream_read_timeout,
                    ),
                    pool_size=settings.upstream_pool_size,
                )
            )
        )
    timeouts = Timeouts(
        connect=settings.upstream_connect_timeout,
        first_byte=settings.upstream_first_byte_timeout,
        read=settings.upstream_read_timeout,
    )
    environ = os.environ if env is None else env
    for adapter in NATIVE_ADAPTERS:
        provider = adapter.from_env(environ, timeouts, settings.upstream_pool_size)
        if provider is not None:
            providers.append(provider)
    for status in provider_statuses(environ, catalogue or load_catalogue()):
        if status.configured:
            providers.append(catalogue_provider(status, timeouts, settings.upstream_pool_size))
        elif _mentions(environ, status):
            # Half-configured (a key but a bad URL variable…): say so at start.
            log.warning("provider %s not enabled: %s", status.name, status.reason)
    return providers


def _mentions(env: Mapping[str, str], status: ProviderConfig) -> bool:
    entry = status.provider
    names = [entry.key_env, entry.base_url_env] if not entry.local else [entry.base_url_env]
    return any(name and (env.get(name) or "").strip() for name in names)
