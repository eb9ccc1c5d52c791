"""Runner settings (environment, prefix ``JETTY_``)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field

from shared.limits import LimitMaxima
from shared.settings import CommonSettings

# agents/ beside services/ in a checkout: where `make` installs the pinned CLIs.
_CHECKOUT_AGENTS = Path(__file__).resolve().parents[2] / "agents"


class RunnerSettings(CommonSettings, LimitMaxima):
    runner_backend: Literal["local", "kubernetes"] = "local"
    # Runs executed at once by this runner (each is an agent in a sandbox).
    runner_concurrency: int = Field(default=2, ge=1, le=256)
    # A run whose runner stops heartbeating for this long is handed to another
    # runner, which fails it with `runner_lost` (runs are not resumed).
    runner_ack_wait: float = Field(default=30.0, ge=1.0)
    # The gateway as the runner reaches it; the local sandbox's only network path
    # is a relay to this address.
    runner_gateway_url: str = "http://127.0.0.1:8080"
    # Folder holding node_modules/ with the agent CLIs (agents/package.json).
    runner_agents_dir: Path = _CHECKOUT_AGENTS
    # Per-run workspaces of the local backend.
    runner_workspace_root: Path = Path(tempfile.gettempdir()) / "jetty-runs"
    # Limits of every sandbox, each for the run as a whole (docs/sandboxes.md):
    # the defaults, and the most a runbook may ask for in `jetty.limits`.
    runner_memory_mb: int = Field(default=4096, ge=64)
    runner_max_processes: int = Field(default=512, ge=8)
    runner_cpu_seconds: int | None = Field(default=None, ge=1)
    runner_max_file_mb: int = Field(default=1024, ge=1)
    runner_cpus: float = Field(default=1.0, gt=0)
    runner_disk_mb: int = Field(default=4096, ge=64)
    runner_max_open_files: int = Field(default=1024, ge=64)
    # The local backend's whole-run limits: a cgroup per sandbox, a filesystem
    # per run (each used where the host allows it; off: rlimits only).
    runner_cgroups: bool = True
    runner_disk_quota: bool = True
    # Connections a sandbox may hold open to the gateway at once (its relay).
    runner_relay_max_connections: int = Field(default=64, ge=4)
    # Tool outputs and messages are kept up to this many characters per step.
    runner_step_text_limit: int = Field(default=16 * 1024, ge=256)
    # How often a running run checks its state for a cancel or a refused call.
    runner_state_poll: float = Field(default=0.5, gt=0)
    # Files one run may store as artifacts (past it, each file left out is named
    # in the run's error).
    runner_max_artifacts: int = Field(default=1000, ge=1)
