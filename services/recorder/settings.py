"""Recorder settings (``JETTY_RECORDER_*`` on top of the common ``JETTY_*``)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import CommonSettings


class RecorderSettings(CommonSettings):
    # Up to this many events are projected in one transaction. Bigger batches
    # amortise the commit; JetStream's max_ack_pending (20k) bounds it from above.
    recorder_batch_size: int = Field(default=500, ge=1, le=10_000)
    # After a batch smaller than recorder_batch_size, wait this long before the
    # next fetch so events accumulate: at moderate load this turns one
    # transaction per event into one per few dozen, which frees CPU that the hot
    # path shares on a small machine. It bounds how stale a read can be (reads
    # wait for the projection anyway, see the gateway).
    recorder_linger: float = Field(default=0.01, ge=0, le=1)
    # How long one pull waits for messages; also bounds how long SIGTERM waits for
    # an idle fetch to return.
    recorder_fetch_timeout: float = Field(default=1.0, gt=0, le=30)
    # Fetching a claim-checked payload from the object store.
    recorder_claim_timeout: float = Field(default=5.0, gt=0)
    # Backoff while Postgres (or NATS) is unreachable: doubles up to the max.
    recorder_retry_initial: float = Field(default=0.2, gt=0)
    recorder_retry_max: float = Field(default=5.0, gt=0)
    # On SIGTERM with Postgres down, give the in-flight batch this long, then hand
    # its messages back to JetStream (nak) and exit.
    recorder_shutdown_grace: float = Field(default=10.0, ge=0)
    recorder_db_pool_size: int = Field(default=2, ge=1)
    recorder_db_connect_timeout: float = Field(default=5.0, gt=0)
    recorder_db_command_timeout: float = Field(default=30.0, gt=0)
    recorder_db_acquire_timeout: float = Field(default=10.0, gt=0)
    recorder_nats_timeout: float = Field(default=5.0, gt=0)
    # The retention sweeper (JETTY_RETENTION_DAYS set): how often it runs and how
    # many trajectories one of its transactions deletes.
    retention_interval: float = Field(default=300.0, gt=0)
    retention_batch: int = Field(default=500, ge=1, le=10_000)
