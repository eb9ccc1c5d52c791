"""A control group per ``local`` sandbox: its memory, processes and CPU limited as
a whole, whatever it forks.

Every process of the sandbox (bwrap, the launcher, the agent, each tool) is in
the run's cgroup from before bwrap starts (the runner's child joins it before
exec), so the limits hold for all of them together: ``memory`` counts each
process's memory *and* the in-memory files they write (tmpfs pages are charged
to the cgroup of whoever wrote them), ``pids`` every task, ``cpu`` the CPUs used
at once. Past the memory limit the kernel's OOM killer acts inside the cgroup
only; past the process limit ``fork`` fails. Either is read back after the run
(:meth:`RunCgroup.exhausted`) and ends it with ``resource_exhausted``.

Both cgroup versions, found at start (:func:`detect`):

* **v1** (separate ``memory``, ``pids``, ``cpu`` hierarchies, as on hosts with
  no systemd): ``<mount>/<controller>/<the runner's own cgroup>/jetty-runs/<run>``
  with ``memory.limit_in_bytes`` (and ``memory.memsw.limit_in_bytes`` when swap
  accounting is on, so swap is no way round it), ``pids.max``,
  ``cpu.cfs_quota_us``; exhaustion read from ``memory.oom_control``
  (``oom_kill``) and ``pids.events`` (``max``).
* **v2** (one unified hierarchy): ``<the runner's cgroup>/jetty-runs/<run>`` with
  ``memory.max``, ``memory.swap.max = 0``, ``pids.max``, ``cpu.max``; exhaustion
  from ``memory.events`` and ``pids.events``. A v2 parent may not both hold
  processes and hand controllers down, so the runner first moves itself into a
  ``<its cgroup>/runner`` leaf and enables ``+memory +pids +cpu`` below its own
  cgroup. That needs the cgroup to be delegated to the runner: under systemd a
  unit with ``Delegate=yes`` (or ``systemd-run --scope -p Delegate=yes``), in a
  container its own cgroup namespace, writable.

When neither can be used (not root, not delegated) the runner says so at start
and the sandbox keeps only its per-process rlimits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.runner.sandbox.base import Limits

log = logging.getLogger(__name__)

MOUNT = Path("/sys/fs/cgroup")
PARENT = "jetty-runs"
V1_CONTROLLERS = ("memory", "pids", "cpu")
CFS_PERIOD_US = 100_000


class CgroupError(Exception):
    pass


def _write(path: Path, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def _counter(path: Path, key: str) -> int:
    """``key N`` from a flat-keyed cgroup file (0 when absent)."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _own_paths() -> dict[str, str]:
    """Controller (``""`` for v2) → this process's cgroup path, from /proc/self/cgroup."""
    paths: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _id, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            paths[name] = path
    return paths


@dataclass(frozen=True, slots=True)
class RunCgroup:
    """One sandbox's cgroup (one folder per v1 controller, one for v2)."""

    version: int
    #: controller → folder (v2: ``{"": folder}``)
    folders: dict[str, Path]

    @property
    def procs_files(self) -> list[str]:
        return [str(folder / "cgroup.procs") for folder in self.folders.values()]

    def join(self) -> None:
        """Put the calling process in the cgroup (in the child, before exec)."""
        pid = str(os.getpid())
        for path in self.procs_files:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, pid.encode())
            finally:
                os.close(fd)

    def _folder(self, controller: str) -> Path | None:
        return self.folders.get("" if self.version == 2 else controller)

    def exhausted(self) -> list[str]:
        """Which limits the run hit: ``memory`` (the OOM killer acted),
        ``processes`` (a fork was refused)."""
        hit = []
        memory, pids = self._folder("memory"), self._folder("pids")
        if memory is not None:
            events = "memory.events" if self.version == 2 else "memory.oom_control"
            if _counter(memory / events, "oom_kill") > 0:
                hit.append("memory")
        if pids is not None and _counter(pids / "pids.events", "max") > 0:
            hit.append("processes")
        return hit

    def peak_memory(self) -> int | None:
        memory = self._folder("memory")
        if memory is None:
            return None
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        try:
            return int((memory / name).read_text())
        except (OSError, ValueError):
            return None

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.procs_files:
            with contextlib.suppress(OSError, ValueError):
                found |= {int(p) for p in Path(path).read_text().split()}
        return found

    def kill_all(self) -> None:
        """SIGKILL whatever is left in the cgroup (a process that left bwrap's
        group, a daemon a tool started)."""
        if self.version == 2:
            with contextlib.suppress(OSError):
                _write(self.folders[""] / "cgroup.kill", "1")
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def remove(self, wait_s: float = 5.0) -> None:
        """Kill what is left and remove the folders (a cgroup is removable once
        its last task is gone: retried a moment)."""
        deadline = time.monotonic() + wait_s
        for folder in self.folders.values():
            while folder.exists():
                self.kill_all()
                try:
                    folder.rmdir()
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if time.monotonic() > deadline:
                        log.warning("cgroup %s not removed: %s", folder, exc)
                        break
                    time.sleep(0.05)


class Cgroups:
    """Where this runner makes its sandboxes' cgroups."""

    def __init__(self, version: int, parents: dict[str, Path]) -> None:
        self.version = version
        #: controller → the folder holding the runs' cgroups
        self.parents = parents

    def create(self, name: str, limits: Limits) -> RunCgroup:
        folders = {key: parent / name for key, parent in self.parents.items()}
        try:
            for folder in folders.values():
                folder.mkdir()
            cgroup = RunCgroup(self.version, folders)
            self._limit(cgroup, limits)
        except OSError as exc:
            RunCgroup(self.version, {k: f for k, f in folders.items() if f.exists()}).remove()
            raise CgroupError(f"cannot make the run's cgroup {name}: {exc}") from exc
        return cgroup

    def _limit(self, cgroup: RunCgroup, limits: Limits) -> None:
        memory = str(limits.memory_mb * 1024 * 1024)
        quota = None if limits.cpus is None else round(limits.cpus * CFS_PERIOD_US)
        if self.version == 2:
            folder = cgroup.folders[""]
            _write(folder / "memory.max", memory)
            with contextlib.suppress(FileNotFoundError):
                _write(folder / "memory.swap.max", "0")
            _write(folder / "pids.max", str(limits.max_processes))
            if quota is not None:
                _write(folder / "cpu.max", f"{quota} {CFS_PERIOD_US}")
            return
        _write(cgroup.folders["memory"] / "memory.limit_in_bytes", memory)
        memsw = cgroup.folders["memory"] / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            _write(memsw, memory)
        _write(cgroup.folders["pids"] / "pids.max", str(limits.max_processes))
        if quota is not None:
            _write(cgroup.folders["cpu"] / "cpu.cfs_period_us", str(CFS_PERIOD_US))
            _write(cgroup.folders["cpu"] / "cpu.cfs_quota_us", str(quota))

    def sweep(self, stale: Callable[[str], bool]) -> int:
        """Remove the run cgroups ``stale`` says are left over (their runner died,
        or their run ended). Returns how many were removed."""
        removed = 0
        names: set[str] = set()
        for parent in self.parents.values():
            with contextlib.suppress(OSError):
                names |= {p.name for p in parent.iterdir() if p.is_dir()}
        for name in filter(stale, names):
            cgroup = RunCgroup(
                self.version, {k: p / name for k, p in self.parents.items() if (p / name).exists()}
            )
            cgroup.remove()
            removed += 1
        return removed


def detect(mount: Path = MOUNT) -> Cgroups | None:
    """The cgroups this runner can make run cgroups in, or None (with the reason
    logged) when it cannot."""
    try:
        own = _own_paths()
        if (mount / "cgroup.controllers").exists():
            return _v2(mount, own.get("", "/"))
        if all((mount / c).is_dir() for c in V1_CONTROLLERS):
            return _v1(mount, own)
    except (OSError, CgroupError) as exc:
        log.warning("no cgroup per sandbox (%s): only per-process limits apply", exc)
        return None
    log.warning("no cgroup per sandbox (no usable cgroup mount): only per-process limits apply")
    return None


def _v1(mount: Path, own: dict[str, str]) -> Cgroups:
    parents = {}
    for controller in V1_CONTROLLERS:
        parent = mount / controller / own.get(controller, "/").lstrip("/") / PARENT
        parent.mkdir(exist_ok=True)
        if controller == "memory":
            with contextlib.suppress(OSError):
                _write(parent / "memory.use_hierarchy", "1")
        parents[controller] = parent
    return Cgroups(1, parents)


def _v2(mount: Path, own_path: str) -> Cgroups:
    own = mount / own_path.lstrip("/")
    wanted = {"memory", "pids", "cpu"}
    available = set((own / "cgroup.controllers").read_text().split())
    if not wanted <= available:
        raise CgroupError(f"controllers {sorted(wanted - available)} not delegated to {own}")
    if own != mount:
        # No processes in a cgroup that hands controllers down: move ours to a leaf.
        leaf = own / "runner"
        leaf.mkdir(exist_ok=True)
        for pid in (own / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                _write(leaf / "cgroup.procs", pid)
    _write(own / "cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(wanted)))
    parent = own / PARENT
    parent.mkdir(exist_ok=True)
    _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(wanted)))
    return Cgroups(2, {"": parent})
