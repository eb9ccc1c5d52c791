"""A size-limited filesystem per run: the disk quota of a ``local`` sandbox.

The run's workspace, home and ``/tmp`` live together on one ext4 filesystem of
``disk_mb`` made for the run: a sparse image file in the run's folder, formatted
with ``mkfs.ext4`` (no journal, nothing reserved) and loop-mounted ``nosuid,nodev``
(some tens of milliseconds, and the image takes on the host only what is written).
Past the size a write fails with ``ENOSPC`` in the sandbox alone; the runner
watches the free space and ends such a run with ``resource_exhausted`` (disk).
Unmounting frees the loop device (``autoclear``); the image goes with the folder.

Making a filesystem and mounting it needs root (the runner is root whenever its
sandboxes run as another host user); a runner that is not root keeps only the
per-file size limit, and says so at start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from services.runner.sandbox.base import SandboxError

log = logging.getLogger(__name__)

IMAGE = "disk.img"
MOUNTPOINT = "fs"
#: below this many free bytes the disk counts as exhausted
FULL_BELOW = 1024 * 1024


def available() -> str | None:
    """None when per-run filesystems can be made here, else why not."""
    if os.geteuid() != 0:
        return "the runner is not root"
    for tool in ("mkfs.ext4", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: e2fsprogs, mount)"
    return None


def _run(argv: list[str]) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SandboxError(f"{argv[0]}: {exc}") from exc
    if done.returncode != 0:
        detail = done.stderr.decode("utf-8", "replace").strip()[-300:]
        raise SandboxError(f"{' '.join(argv[:2])} failed: {detail}")


@dataclass(frozen=True, slots=True)
class RunDisk:
    mountpoint: Path
    size: int

    @classmethod
    def create(cls, folder: Path, size_mb: int, owner: int | None) -> RunDisk:
        """Make and mount the filesystem in ``folder``; its root belongs to
        ``owner`` (the sandbox's host user)."""
        image, mountpoint = folder / IMAGE, folder / MOUNTPOINT
        size = size_mb * 1024 * 1024
        with open(image, "xb") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.truncate(size)
        uid = owner if owner is not None else os.getuid()
        _run([
            "mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal",
            "-E", f"nodiscard,lazy_itable_init=1,root_owner={uid}:{uid}", str(image),
        ])  # fmt: skip
        mountpoint.mkdir(mode=0o700)
        _run(["mount", "-o", "loop,nosuid,nodev,noatime", str(image), str(mountpoint)])
        with contextlib.suppress(OSError):  # not the agent's business
            (mountpoint / "lost+found").rmdir()
        return cls(mountpoint, size)

    def free_bytes(self) -> int:
        stats = os.statvfs(self.mountpoint)
        return stats.f_bavail * stats.f_frsize

    def full(self) -> bool:
        try:
            return self.free_bytes() < FULL_BELOW
        except OSError:
            return False

    def unmount(self) -> None:
        unmount(self.mountpoint)


def unmount(mountpoint: Path) -> None:
    """Unmount (lazily if something still holds it); nothing when not mounted."""
    if not os.path.ismount(mountpoint):
        return
    done = subprocess.run(["umount", str(mountpoint)], capture_output=True, check=False)
    if done.returncode != 0 and os.path.ismount(mountpoint):
        log.warning("umount %s: %s; detaching lazily", mountpoint, done.stderr.decode().strip())
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, check=False)
