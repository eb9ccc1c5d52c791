"""How a run's sandbox limits are chosen, and the errors of a run that used one
up or lost some of its files (the runner's own words for them)."""

from __future__ import annotations

from services.runner.sandbox.base import ArtifactError, Limits
from services.runner.settings import RunnerSettings
from shared.events.completion import ErrorRecord
from shared.limits import RunLimits


def _error(status: int, error_type: str, code: str, message: str) -> ErrorRecord:
    return ErrorRecord(status=status, type=error_type, code=code, message=message)


def run_limits(settings: RunnerSettings, timeout_s: float, asked: RunLimits) -> Limits:
    """The run's sandbox limits: the runner's defaults, replaced by what the
    runbook asked for (``jetty.limits``), never past the operator's maxima."""

    def pick(name: str, default: float) -> float:
        value = getattr(asked, name)
        return default if value is None else min(value, settings.maximum(name))

    return Limits(
        timeout_s=timeout_s,
        memory_mb=int(pick("memory_mb", settings.runner_memory_mb)),
        max_processes=int(pick("max_processes", settings.runner_max_processes)),
        cpu_seconds=settings.runner_cpu_seconds,
        max_file_mb=settings.runner_max_file_mb,
        cpus=pick("cpus", settings.runner_cpus),
        disk_mb=int(pick("disk_mb", settings.runner_disk_mb)),
        max_open_files=settings.runner_max_open_files,
    )


def resource_exhausted(hit: tuple[str, ...], limits: Limits | None) -> ErrorRecord:
    """The error of a run that used up one of its limits (named, with its size)."""
    sizes = {
        "memory": f"{limits.memory_mb} MB for all its processes and in-memory files",
        "processes": f"{limits.max_processes} processes",
        "disk": f"{limits.disk_mb} MB of disk for its workspace, home and /tmp",
    } if limits is not None else {}  # fmt: skip
    named = "; ".join(f"{name} ({sizes[name]})" if name in sizes else name for name in hit)
    return _error(
        507 if hit == ("disk",) else 500,
        "resource_exhausted",
        "resource_exhausted",
        f"The run used up its limit of {named}; the sandbox's processes were stopped "
        "there. Ask for more in jetty.limits (within the operator's maximum) or do less.",
    )


def artifacts_incomplete(lost: list[ArtifactError]) -> ErrorRecord:
    """The error of a run whose agent succeeded but some of whose files were not
    stored: it names each (the stored ones are kept and listed as artifacts)."""
    shown = "; ".join(f"{e.path!r}: {e.reason}" for e in lost[:20])
    more = f"; and {len(lost) - 20} more" if len(lost) > 20 else ""
    return _error(
        500,
        "artifact_error",
        "artifacts_incomplete",
        f"The agent finished, but {len(lost)} of its files could not be stored "
        f"(the others are kept): {shown}{more}.",
    )
