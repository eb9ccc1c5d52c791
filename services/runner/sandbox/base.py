"""The port both sandbox backends implement (``local`` bubblewrap, ``kubernetes``).

The runner prepares a :class:`SandboxSpec` (the agent's command, the input files
to place in the workspace, limits) and gets back a running :class:`Sandbox`:
the agent's stdout lines as they come, its exit, a kill switch, and at the end
the files it created or changed. The backend owns getting inputs in and outputs
out (a local folder for ``local``; presigned object-store URLs for
``kubernetes``), so the runner never needs to know where the workspace lives.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from services.runner.agents.base import AgentCommand


class SandboxError(Exception):
    """The sandbox could not be created or started (the run fails with it)."""


@dataclass(frozen=True, slots=True)
class InputFile:
    #: where it goes, relative to the workspace (``uploads/data.csv``)
    path: str
    #: its object key in the bucket (``<collection>/uploads/data.csv``)
    key: str


@dataclass(frozen=True, slots=True)
class Limits:
    """What one run may use, as a whole (every process of its sandbox together).

    The same concepts on both backends: ``local`` enforces them with a cgroup per
    sandbox, a size-limited filesystem per run and rlimits; ``kubernetes`` maps
    ``memory_mb`` / ``cpus`` to the container's limits and ``disk_mb`` to its
    ``ephemeral-storage`` limit."""

    #: wall-clock limit of the agent, seconds (the backend kills it past this)
    timeout_s: float
    #: memory of all its processes and its in-memory files together, MB
    memory_mb: int = 4096
    max_processes: int = 512
    #: CPU time of one process, seconds (None: no limit)
    cpu_seconds: int | None = None
    #: largest file the agent may write, MB
    max_file_mb: int = 1024
    #: CPUs the whole run may use at once (None: the backend's default)
    cpus: float | None = None
    #: workspace, home and /tmp together, MB (None: the backend's default)
    disk_mb: int | None = None
    #: open files per process
    max_open_files: int = 1024


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    trajectory_id: str
    collection: str
    task: str
    command: AgentCommand
    inputs: list[InputFile]
    limits: Limits
    #: where artifacts go: ``<collection>/<task>/<trajectory>/`` (+ workspace path)
    artifact_prefix: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OutputFile:
    """A file the agent created or changed, already in the object store."""

    path: str
    key: str
    size: int
    sha256: str
    content_type: str


@dataclass(frozen=True, slots=True)
class ArtifactError:
    """A file the agent made that could not be stored, and why."""

    #: the file's name as the catalogue would show it
    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class SandboxExit:
    #: the agent's exit code; None when it was killed (timeout, cancel)
    exit_code: int | None
    timed_out: bool = False
    killed: bool = False
    #: the tail of the agent's stderr, for the error message of a failed run
    stderr_tail: str = ""
    #: the run's limits it hit: ``memory``, ``processes``, ``disk``
    exhausted: tuple[str, ...] = ()


class Sandbox(Protocol):
    #: a name for logs and the runbook.started event (bwrap pid, Job name)
    sandbox_id: str
    #: after collect_outputs(): the files it could not store (the others are kept)
    artifact_errors: list[ArtifactError]

    def lines(self) -> AsyncIterator[str]:
        """The agent's stdout, line by line (no newline), until it exits."""

    async def wait(self) -> SandboxExit:
        """Wait for the agent to end (or the timeout to kill it)."""

    async def kill(self) -> None:
        """Stop the agent now (cancel, budget); idempotent."""

    async def collect_outputs(self) -> list[OutputFile]:
        """After the end: upload every file the agent created or changed (inputs
        it left unchanged are not artifacts) and describe them."""

    async def destroy(self) -> None:
        """Remove everything the sandbox left (workspace, Job); idempotent."""


@dataclass(frozen=True, slots=True)
class SandboxLayout:
    """Where things are as the agent inside sees them (fills :class:`AgentSpec`)."""

    workspace: str
    home: str
    agents_dir: str
    #: the gateway's base URL from inside (``local``: the relay's loopback port)
    gateway_url: str


class SandboxBackend(Protocol):
    name: str
    layout: SandboxLayout

    async def open(self) -> None:
        """At the runner's start, before the first run: find what the host allows,
        clean up what runners before it left."""

    async def start(self, spec: SandboxSpec) -> Sandbox: ...

    async def close(self) -> None: ...
