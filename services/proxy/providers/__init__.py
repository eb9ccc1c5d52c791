"""Provider adapters behind the proxy, and the one place that builds them from settings.

Adding a provider: implement :class:`~services.proxy.providers.base.Provider`
(translation only; the worker does the rest), build it in :func:`build_providers`
when its configuration is present, and give the router its bare-name patterns.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from services.proxy.providers import anthropic, azure, cohere, gemini
from services.proxy.providers.base import Provider
from services.proxy.providers.mock import MockProvider
from services.proxy.providers.openai_compat import (
    OpenAICompatConfig,
    OpenAICompatProvider,
    Timeouts,
)
from services.proxy.settings import OPENAI_DEFAULT_BASE_URL, ProxySettings

__all__ = ["NATIVE_ADAPTERS", "Provider", "build_providers"]

# Native adapters: each module exposes NAME, BARE_PATTERNS, DEFAULT_MODELS,
# SETUP_HINT and from_env(env, timeouts, pool_size) -> Provider | None.
NATIVE_ADAPTERS = (anthropic, gemini, cohere, azure)


def build_providers(
    settings: ProxySettings, env: Mapping[str, str] | None = None
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
    return providers
