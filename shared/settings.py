"""Settings every service reads from the environment (prefix ``JETTY_``).

Each service extends :class:`CommonSettings` with its own fields in its own
``settings.py``; what lives here is what more than one process must agree on.
"""

from __future__ import annotations

from typing import Literal

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
    # Networks webhook targets may be in although they are loopback/private/link-local
    # (CIDRs, comma separated; e.g. 127.0.0.0/8 for a receiver on this machine).
    webhook_allow_networks: str = ""
    # Bodies (requests, event payloads) above this many bytes travel by claim check
    # through the JetStream object store instead of inline on NATS (default limit 1 MiB).
    claim_threshold_bytes: int = 256 * 1024
    stream_replicas: int = Field(default=1, ge=1, le=5)
    # The health port of proxy, recorder, runner and webhooks (/healthz, /readyz; see
    # shared/health.py). Unset: no health port (several services on one host).
    health_host: str = "127.0.0.1"
    health_port: int | None = Field(default=None, ge=0, le=65535)
    # The S3-compatible object store (MinIO in production; `jetty up` and the tests
    # start a local one). The endpoint is ``host:port``, as the minio SDK takes it.
    s3_endpoint: str = "127.0.0.1:9000"
    s3_access_key: str | None = Field(default=None, repr=False)
    s3_secret_key: str | None = Field(default=None, repr=False)
    s3_bucket: str = "jetty"
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    s3_timeout: float = Field(default=30.0, gt=0)
    # Key for secrets at rest (docs/jetty-parity.md): 32 bytes, base64. Unset: the
    # secrets routes and jetty.secret_params answer 503 secrets_not_configured.
    secrets_key: str | None = Field(default=None, repr=False)
    # The store as clients outside reach it, for presigned URLs (``host:port``, or a
    # URL with its scheme); by default the endpoint above.
    s3_public_endpoint: str | None = None
    # What trajectories keep of the bodies by default: full | redacted | none
    # (a request's jetty.store: false asks for none). shared/storage_policy.py.
    store_bodies: Literal["full", "redacted", "none"] = "full"
    # Days of events, projection rows and artifacts kept; None keeps them for ever.
    retention_days: float | None = Field(default=None, gt=0)
