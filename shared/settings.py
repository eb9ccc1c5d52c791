"""Settings every service reads from the environment (prefix ``JETTY_``).

Each service extends :class:`CommonSettings` with its own fields in its own
``settings.py``; what lives here is what more than one process must agree on.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JETTY_", extra="ignore")

    nats_url: str = Field(
        default="nats://127.0.0.1:4222", description="NATS server URL(s), comma separated"
    )
    database_url: str = Field(
        default="postgresql://jetty@127.0.0.1:5432/jetty", description="PostgreSQL DSN"
    )
    log_level: str = "INFO"
    # Bodies (requests, event payloads) above this many bytes travel by claim check
    # through the JetStream object store instead of inline on NATS (default limit 1 MiB).
    claim_threshold_bytes: int = 256 * 1024
    stream_replicas: int = Field(default=1, ge=1, le=5)
