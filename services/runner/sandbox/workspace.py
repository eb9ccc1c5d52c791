"""The per-run directory of a ``local`` sandbox on the host, and getting files in.

Layout (every run its own, under the backend's root)::

    <root>/<runner pid>.<trajectory>-<random>/   0700, the sandbox's host user
        disk.img                      the run's own filesystem (with a disk quota)
        fs/                           ... mounted here (:mod:`.rundisk`)
            workspace/                -> /workspace    (read-write)
            home/                     -> /home/agent   (read-write)
            tmp/                      -> /tmp          (read-write)
            jetty/                    -> /run/jetty    (read-only: the relay's socket)

Without a disk quota the four folders are in the run's folder itself and ``/tmp``
is a size-limited tmpfs instead. The runner's pid in the name lets a runner
sweep the folders of runners that died (:func:`sweep`).

When the runner is root the sandbox runs as another, unprivileged host user
(``owner``), which must own what it may write; when the runner is not root the
sandbox's user *is* the runner's, and nothing is handed over.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import shutil
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from services.runner.sandbox.base import InputFile, SandboxError
from services.runner.sandbox.rundisk import MOUNTPOINT, RunDisk, unmount
from shared.objectstore import ObjectStore, ObjectStoreError

log = logging.getLogger(__name__)

HASH_CHUNK = 1024 * 1024


def relative(path: str) -> PurePosixPath:
    """``path`` as a safe relative path (no ``..``, not absolute, not empty)."""
    pure = PurePosixPath(path)
    if pure.is_absolute() or not pure.parts or any(p in ("..", ".") for p in pure.parts):
        raise SandboxError(f"not a relative path inside the sandbox: {path!r}")
    if "\x00" in path:
        raise SandboxError(f"NUL in a path: {path!r}")
    return pure


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def blocked_by(path: Path, uid: int) -> Path | None:
    """The first folder on the way to ``path`` (itself included) that host user
    ``uid`` (in no group but its own) may not pass through; None if none."""
    resolved = path.resolve()
    for folder in (*reversed(resolved.parents), resolved):
        info = folder.stat()
        if info.st_uid == uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid == uid:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return folder
    return None


def _open_up(root: Path) -> None:
    """Give the owner rwx on every folder below ``root`` (never following links),
    so folders the agent made read-only can be emptied by a non-root runner."""
    os.chmod(root, stat.S_IRWXU)
    for dirpath, dirnames, _files in os.walk(root):
        for name in dirnames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, stat.S_IRWXU)


@dataclass(frozen=True, slots=True)
class RunDir:
    root: Path
    workspace: Path
    home: Path
    jetty: Path
    #: the host uid (and gid) the sandbox runs as, when it is not ours
    owner: int | None
    #: the run's /tmp on its own filesystem (None: a tmpfs)
    tmp: Path | None = None
    disk: RunDisk | None = None

    @classmethod
    def create(cls, base: Path, name: str, owner: int | None, disk_mb: int | None = None) -> RunDir:
        base.mkdir(parents=True, exist_ok=True)
        os.chmod(base, 0o711)  # others may pass through, not list the runs
        if owner is not None and (blocked := blocked_by(base, owner)) is not None:
            raise SandboxError(
                f"the sandbox's host user {owner} cannot pass through {blocked}: "
                "put the sandbox root where every user may pass (e.g. under /tmp or /var/lib)"
            )
        root = base / f"{os.getpid()}.{name}-{secrets.token_hex(4)}"
        root.mkdir(mode=0o700)
        disk = None
        try:
            if disk_mb is not None:
                disk = RunDisk.create(root, disk_mb, owner)
            data = root if disk is None else disk.mountpoint
            run = cls(
                root, data / "workspace", data / "home", data / "jetty", owner,
                tmp=None if disk is None else data / "tmp", disk=disk,
            )  # fmt: skip
            private = [run.workspace, run.home] + ([run.tmp] if run.tmp else [])
            for folder in private:
                folder.mkdir(mode=0o700)
            if run.tmp is not None:
                os.chmod(run.tmp, 0o1777)
            run.jetty.mkdir(mode=0o755)
            if owner is not None:
                for folder in (root, *private):
                    os.chown(folder, owner, owner)
        except BaseException:
            remove_folder(root)
            raise
        return run

    def _own(self, path: Path) -> None:
        if self.owner is not None:
            os.chown(path, self.owner, self.owner, follow_symlinks=False)

    def _parents(self, base: Path, rel: PurePosixPath) -> Path:
        """Create the folders of ``rel`` under ``base`` (owned by the sandbox)."""
        current = base
        for part in rel.parts[:-1]:
            current = current / part
            if not current.is_dir():
                current.mkdir(mode=0o755)
                self._own(current)
        return current / rel.name

    async def place_inputs(
        self, store: ObjectStore, inputs: Iterable[InputFile], limit: int
    ) -> dict[str, str]:
        """Download each input into the workspace; returns ``{path: sha256}``."""
        hashes: dict[str, str] = {}
        for item in inputs:
            rel = relative(item.path)
            try:
                target = self._parents(self.workspace, rel)
                await store.get_to_file(item.key, target, limit=limit)
            except (ObjectStoreError, OSError) as exc:
                raise SandboxError(f"input {item.path} ({item.key}): {exc}") from exc
            self._own(target)
            hashes[rel.as_posix()] = await asyncio.to_thread(sha256_file, target)
        return hashes

    def write_home_files(self, files: Mapping[str, bytes]) -> None:
        for name, data in files.items():
            target = self._parents(self.home, relative(name))
            target.write_bytes(data)
            os.chmod(target, 0o600)
            self._own(target)

    def remove(self) -> None:
        remove_folder(self.root)


def remove_folder(root: Path) -> None:
    """Remove a run's folder (its filesystem unmounted first)."""
    if not root.exists():
        return
    unmount(root / MOUNTPOINT)
    try:
        shutil.rmtree(root)
    except PermissionError:
        _open_up(root)
        shutil.rmtree(root)


def sweep(base: Path) -> list[Path]:
    """Remove the run folders under ``base`` of runners that are gone (a runner
    cleans up its own, a start that failed half-way included). Returns what was
    removed."""
    removed: list[Path] = []
    try:
        entries = list(base.iterdir())
    except FileNotFoundError:
        return removed
    for folder in entries:
        pid_text, dot, _rest = folder.name.partition(".")
        if not dot or not pid_text.isdigit() or not folder.is_dir():
            continue
        pid = int(pid_text)
        if pid == os.getpid() or pid_alive(pid):
            continue
        try:
            remove_folder(folder)
            removed.append(folder)
        except OSError as exc:
            log.warning("run folder %s not removed: %s", folder, exc)
    return removed


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
