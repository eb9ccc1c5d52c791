"""Getting a finished run's files out: walk the workspace, upload what the agent
created or changed.

The walk never follows a symbolic link (the agent could point one at a host
file) and takes regular files only; it runs after every process of the sandbox
has ended, and still opens each file with ``O_NOFOLLOW`` and checks what it got.
An input whose bytes are unchanged is not an artifact. At most ``max_files``
files and ``max_bytes`` bytes in all are uploaded (in path order); what is
left out is logged and counted in :class:`Collected`.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import os
import stat
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from services.runner.sandbox.base import OutputFile, SandboxError
from services.runner.sandbox.workspace import sha256_file
from shared.objectstore import ObjectStore, ObjectStoreError

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
DEFAULT_TYPE = "application/octet-stream"
_TYPES = {".md": "text/markdown", ".jsonl": "application/jsonl", ".csv": "text/csv"}


def content_type(path: str) -> str:
    suffix = os.path.splitext(path)[1].lower()
    if suffix in _TYPES:
        return _TYPES[suffix]
    guessed, _encoding = mimetypes.guess_type(path, strict=False)
    return guessed or DEFAULT_TYPE


@dataclass(frozen=True, slots=True)
class Candidate:
    path: str  # relative, with forward slashes
    size: int


@dataclass(slots=True)
class Collected:
    files: list[OutputFile] = field(default_factory=list)
    #: relative paths left out (over the count or size bound, unreadable names)
    skipped: list[str] = field(default_factory=list)


def walk(workspace: Path) -> Iterator[Candidate]:
    """Every regular file below ``workspace``, in path order, links not followed.
    A folder the runner may not read (a non-root runner, the agent chmod-ed it
    000) is opened up first: it is the runner's own uid."""

    def visit(folder: Path, prefix: str) -> Iterator[Candidate]:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except PermissionError:
            os.chmod(folder, stat.S_IRWXU)
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        for entry in entries:
            rel = prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                yield from visit(Path(entry.path), rel + "/")
            elif entry.is_file(follow_symlinks=False):
                yield Candidate(rel, entry.stat(follow_symlinks=False).st_size)

    yield from visit(workspace, "")


def _open(path: Path) -> int:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except PermissionError:  # mode 000 on a file a non-root runner owns
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR, follow_symlinks=False)
        fd = os.open(path, flags)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SandboxError(f"{path} is no longer a regular file")
    return fd


async def _chunks(fh: BinaryIO) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(fh.read, CHUNK):
        yield chunk


async def collect(
    store: ObjectStore,
    workspace: Path,
    *,
    inputs: Mapping[str, str],
    prefix: str,
    max_files: int,
    max_bytes: int,
) -> Collected:
    """Upload new and changed files under ``prefix + path``; ``inputs`` maps each
    input's path to the sha256 it had when placed."""
    out = Collected()
    total = 0
    for item in await asyncio.to_thread(lambda: list(walk(workspace))):
        path = workspace / item.path
        try:
            item.path.encode("utf-8")
        except UnicodeEncodeError:  # a name that is not UTF-8 cannot be a key
            out.skipped.append(item.path)
            continue
        original = inputs.get(item.path)
        if original is not None and await asyncio.to_thread(sha256_file, path) == original:
            continue
        if len(out.files) >= max_files or total + item.size > max_bytes:
            out.skipped.append(item.path)
            continue
        kind = content_type(item.path)
        with os.fdopen(await asyncio.to_thread(_open, path), "rb") as fh:
            try:
                stored = await store.put_stream(
                    prefix + item.path, _chunks(fh), content_type=kind, limit=max_bytes - total
                )
            except ObjectStoreError as exc:
                raise SandboxError(f"upload of {item.path}: {exc}") from exc
        total += stored.size
        out.files.append(OutputFile(item.path, stored.key, stored.size, stored.sha256, kind))
    if out.skipped:
        log.warning(
            "%s: %d file(s) not uploaded (bounds: %d files, %d bytes, UTF-8 names): %s",
            workspace, len(out.skipped), max_files, max_bytes, ", ".join(out.skipped[:20]),
        )  # fmt: skip
    return out
