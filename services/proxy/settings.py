"""Proxy settings: ``JETTY_*`` variables, plus the provider variables under the names
the providers' own SDKs use (``OPENAI_API_KEY``, ``OPENAI_BASE_URL``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from shared.settings import CommonSettings

# Listed by GET /v1/models when OpenAI is configured (JETTY_OPENAI_MODELS overrides).
# Any other OpenAI model still routes: by its bare name if it matches a pattern in
# router.DEFAULT_BARE_RULES, or as ``openai/<model>``.
DEFAULT_OPENAI_MODELS = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-5",
    "gpt-5-mini",
    "gpt-5-nano",
    "o3",
    "o3-mini",
    "o4-mini",
)
OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"


class ProxySettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="JETTY_", extra="ignore", populate_by_name=True)

    # --- providers -----------------------------------------------------------------
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "openai_api_key")
    )
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_BASE_URL", "openai_base_url")
    )
    openai_models: Annotated[tuple[str, ...], NoDecode] = Field(
        default=DEFAULT_OPENAI_MODELS,
        description="JETTY_OPENAI_MODELS: comma-separated ids listed by GET /v1/models",
    )
    mock_models: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("echo",), description="JETTY_MOCK_MODELS: names listed as mock/<name>"
    )

    # --- upstream HTTP ---------------------------------------------------------------
    upstream_connect_timeout: float = Field(default=10.0, gt=0)
    upstream_first_byte_timeout: float = Field(default=300.0, gt=0)
    upstream_read_timeout: float = Field(default=120.0, gt=0)
    upstream_total_timeout: float = Field(default=600.0, gt=0)
    upstream_pool_size: int = Field(default=1024, ge=1)

    # --- routing and retries ---------------------------------------------------------
    routes_file: Path | None = Field(
        default=None, description="JETTY_ROUTES_FILE: TOML aliases (docs/routing.md)"
    )
    routes_seed: int | None = Field(
        default=None, description="seeds the weighted choice among alias targets (tests)"
    )
    retry_max_attempts: int = Field(
        default=2, ge=0, le=10, description="retries of one target after its first try"
    )
    retry_base_delay: float = Field(default=0.5, ge=0, description="first backoff ceiling, s")
    retry_max_delay: float = Field(
        default=5.0,
        ge=0,
        description="longest pause before a retry; a longer Retry-After falls back instead",
    )

    # --- the worker ------------------------------------------------------------------
    proxy_max_in_flight: int = Field(default=1024, ge=1)
    proxy_shutdown_grace: float = Field(
        default=30.0, ge=0, description="seconds in-flight calls may take to finish on SIGTERM"
    )
    proxy_requested_delay: float = Field(
        default=0.25,
        ge=0,
        description=(
            "seconds a call runs before completion.requested is published (0: at once);"
            " a call that ends sooner is recorded by its end event alone"
        ),
    )

    @field_validator("openai_models", "mock_models", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @property
    def openai_configured(self) -> bool:
        return bool(self.openai_api_key or self.openai_base_url)
