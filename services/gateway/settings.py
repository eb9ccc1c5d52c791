"""Gateway settings (environment, prefix ``JETTY_``)."""

from __future__ import annotations

from pydantic import Field

from shared.limits import LimitMaxima
from shared.settings import CommonSettings


class GatewaySettings(CommonSettings, LimitMaxima):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # Worker processes sharing the port (SO_REUSEPORT, set on each when above 1);
    # jetty_cli/stack.py starts this many. Each has its own NATS connection and
    # reply inbox; keys, limits and routines are shared through JetStream as
    # between replicas.
    gateway_workers: int = Field(default=1, ge=1, le=64)
    bootstrap_token: str | None = Field(default=None, repr=False)
    bootstrap_collection: str = "default"
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    # A proxy sends a keep-alive frame every few seconds while its upstream is
    # quiet; silence longer than this means the proxy is gone.
    proxy_idle_timeout: float = Field(default=20.0, gt=0)
    # How long a trajectory GET may wait for the recorder to catch up before
    # answering (read-your-writes right after a completion).
    consistency_wait: float = Field(default=3.0, ge=0)
    # A proxy records a quick call by its end event alone (JETTY_PROXY_REQUESTED_DELAY),
    # so an id handed out moments ago may not be in the stream yet: a read of an id
    # younger than this waits for it instead of answering 404.
    fresh_id_window: float = Field(default=2.0, ge=0)
    db_pool_max: int = Field(default=10, ge=1)
    # Per uploaded file; streamed, so this bounds storage, not memory.
    max_upload_bytes: int = Field(default=100 * 1024 * 1024, ge=1)
    # Runbook mode. Defaults for a run's limits (a request's jetty.budget /
    # jetty.timeout_s override them, up to the maximum timeout).
    runbook_max_tokens: int = Field(default=2_000_000, ge=1)
    runbook_max_cost_usd: float = Field(default=10.0, gt=0)
    runbook_timeout: float = Field(default=1800.0, gt=0)
    runbook_max_timeout: float = Field(default=6 * 3600.0, gt=0)
    # stream:false waits this long for the run to end before answering with its id
    # and status for polling.
    runbook_wait: float = Field(default=600.0, ge=0)
    # An SSE comment goes out after this many quiet seconds of a runbook stream.
    runbook_keepalive: float = Field(default=15.0, gt=0)
    # Lifetime of an artifact's presigned URL (GET …/artifacts/{path}?presign=1).
    artifact_url_ttl: int = Field(default=300, ge=1, le=7 * 24 * 3600)
    # jetty.unzip: limits on one archive once unpacked (files, bytes, expansion ratio).
    unzip_max_files: int = Field(default=1000, ge=1)
    unzip_max_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    unzip_max_ratio: float = Field(default=100.0, gt=1)
    # Routines (services/gateway/routines/): whether this replica fires them, how
    # often it looks, when a half-done firing is taken over, the shortest interval.
    routines_enabled: bool = True
    routines_tick: float = Field(default=1.0, gt=0)
    routines_claim_timeout: float = Field(default=30.0, gt=0)
    routines_min_interval: float = Field(default=60.0, ge=1)
    # Base URL of artifact links in answers; by default the request's own origin.
    public_url: str | None = None
    # Prometheus counters on every request (GET /metrics); off only to measure them.
    metrics_enabled: bool = True
