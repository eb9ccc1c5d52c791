"""A runbook's sandbox limits: what a request may ask for (``jetty.limits``) and
the operator's maxima, shared by the gateway (which refuses a request past them)
and the runner (which applies them, and clamps to its own maxima again).

Every limit is for the run as a whole — all the processes of its sandbox
together — and is the same concept on both sandbox backends: ``memory_mb`` and
``cpus`` are the container's memory and CPU limits on Kubernetes and the run's
cgroup locally, ``disk_mb`` is ``ephemeral-storage`` on Kubernetes and the run's
own filesystem locally, ``max_processes`` the cgroup's (local) or the pod's
process limit. Absent: the runner's default (``JETTY_RUNNER_MEMORY_MB``,
``JETTY_RUNNER_CPUS``, ``JETTY_RUNNER_DISK_MB``, ``JETTY_RUNNER_MAX_PROCESSES``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

LIMIT_NAMES = ("memory_mb", "cpus", "disk_mb", "max_processes")


class RunLimits(BaseModel):
    """``jetty.limits``: each field optional."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    memory_mb: int | None = Field(default=None, ge=64)
    cpus: float | None = Field(default=None, gt=0, le=1024)
    disk_mb: int | None = Field(default=None, ge=64)
    max_processes: int | None = Field(default=None, ge=8)


class LimitMaxima(BaseSettings):
    """The most a runbook may ask for (environment ``JETTY_RUNNER_LIMIT_MAX_*``:
    the same variables configure the gateway and the runners)."""

    # The same as CommonSettings': the services' settings classes inherit both.
    model_config = SettingsConfigDict(env_prefix="JETTY_", extra="ignore")

    runner_limit_max_memory_mb: int = Field(default=8192, ge=64)
    runner_limit_max_cpus: float = Field(default=2.0, gt=0)
    runner_limit_max_disk_mb: int = Field(default=16384, ge=64)
    runner_limit_max_processes: int = Field(default=2048, ge=8)

    def maximum(self, name: str) -> float:
        key = "processes" if name == "max_processes" else name
        value: float = getattr(self, f"runner_limit_max_{key}")
        return value

    def over(self, asked: RunLimits) -> list[tuple[str, float]]:
        """The limits ``asked`` puts past the maxima, each with its maximum."""
        found = []
        for name in LIMIT_NAMES:
            value = getattr(asked, name)
            if value is not None and value > self.maximum(name):
                found.append((name, self.maximum(name)))
        return found
