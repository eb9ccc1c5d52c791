"""What a ``local`` sandbox may use of the host, as a whole, and finding out when it
used it all: the run's cgroup (:mod:`.cgroups`: memory, processes, CPU), its own
filesystem (:mod:`.rundisk`: workspace, home and ``/tmp``), and the sweep of
what sandboxes of dead runners left behind.

:class:`HostResources` is the backend's: it finds at start what this host allows
(and logs what it does not), makes each run's :class:`RunResources` and sweeps.
A run's resources watch its disk while it runs and answer, at the end, which
limits it hit (``memory``, ``processes``, ``disk``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from services.runner.sandbox import cgroups, rundisk
from services.runner.sandbox.base import Limits, SandboxError
from services.runner.sandbox.workspace import RunDir, pid_alive, sweep

log = logging.getLogger(__name__)

DISK_POLL_S = 0.5


@dataclass(slots=True)
class RunResources:
    run: RunDir
    cgroup: cgroups.RunCgroup | None
    _disk_full: bool = False
    _watch: asyncio.Task[None] | None = field(default=None)

    def join(self) -> None:
        """In the sandbox's first process, before exec: enter the run's cgroup."""
        if self.cgroup is not None:
            self.cgroup.join()

    def start_watching(self) -> None:
        if self.run.disk is not None:
            self._watch = asyncio.create_task(self._watch_disk(self.run.disk))

    async def _watch_disk(self, disk: rundisk.RunDisk) -> None:
        while not self._disk_full:
            self._disk_full = await asyncio.to_thread(disk.full)
            await asyncio.sleep(DISK_POLL_S)

    def exhausted(self) -> tuple[str, ...]:
        """The limits the run hit, for its error (after it ended)."""
        hit = list(self.cgroup.exhausted()) if self.cgroup is not None else []
        if self._disk_full or (self.run.disk is not None and self.run.disk.full()):
            hit.append("disk")
        return tuple(hit)

    def kill_all(self) -> None:
        if self.cgroup is not None:
            self.cgroup.kill_all()

    async def release(self) -> None:
        """Kill what is left of the sandbox, remove its cgroup and its folder."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self.cgroup is not None:
            await asyncio.to_thread(self.cgroup.remove)
        await asyncio.to_thread(self.run.remove)


class HostResources:
    def __init__(self, root: Path, *, use_cgroups: bool, use_disk: bool) -> None:
        self.root = root
        self.cgroups = cgroups.detect() if use_cgroups else None
        why_not = rundisk.available() if use_disk else "turned off"
        if why_not is not None:
            log.warning("no disk quota per run (%s): only the per-file size limit applies", why_not)
        self.disk = why_not is None

    def describe(self) -> str:
        cg = f"cgroup v{self.cgroups.version}" if self.cgroups else "no cgroup"
        return f"{cg}, {'a filesystem per run' if self.disk else 'no disk quota'}"

    def prepare(self, name: str, limits: Limits, owner: int | None) -> RunResources:
        """The run's folder (on its own filesystem when there is a quota) and its
        cgroup, both named after the folder."""
        disk_mb = limits.disk_mb if self.disk else None
        run = RunDir.create(self.root, name, owner, disk_mb)
        cgroup = None
        if self.cgroups is not None:
            try:
                cgroup = self.cgroups.create(run.root.name, limits)
            except cgroups.CgroupError as exc:
                run.remove()
                raise SandboxError(str(exc)) from exc
        return RunResources(run, cgroup)

    def sweep(self) -> int:
        """Remove the run folders and cgroups that runners which died left."""
        removed = sweep(self.root)
        if self.cgroups is not None:

            def stale(name: str) -> bool:  # named <runner pid>.<run>: its runner is gone
                pid, dot, _rest = name.partition(".")
                return bool(dot) and pid.isdigit() and not pid_alive(int(pid))

            removed_cgroups = self.cgroups.sweep(stale)
        else:
            removed_cgroups = 0
        if removed or removed_cgroups:
            log.info(
                "swept %d run folder(s), %d cgroup(s) left over", len(removed), removed_cgroups
            )
        return len(removed) + removed_cgroups
