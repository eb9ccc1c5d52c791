"""Getting a finished run's files out: walk the workspace, upload what the agent
created or changed.

The walk never follows a symbolic link (the agent could point one at a host
file) and takes regular files only; it runs after every process of the sandbox
has ended, and still opens each file with ``O_NOFOLLOW`` and checks what it got.
An input whose bytes are unchanged is not an artifact. At most ``max_files``
files and ``max_bytes`` bytes in all are uploaded (in path order).

A name that cannot be an object key as it is (control characters, a name that
is not UTF-8, one too long for a key) is stored under a safe key
(:func:`stored_key`): the original name stays the artifact's ``path`` in the
catalogue. A file that still cannot be stored (the store refused it, it vanished,
it is over a bound) is an :class:`ArtifactError` of its own in
:class:`Collected`: the other files are kept, and the run says it lost some.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import mimetypes
import os
import stat
import unicodedata
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from services.runner.sandbox.base import ArtifactError, OutputFile, SandboxError
from services.runner.sandbox.workspace import sha256_file
from shared.objectstore import ObjectStore, ObjectStoreError, StoredObject

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


#: S3 keys are at most 1024 bytes; the prefix (collection/task/trajectory) takes
#: part of it
MAX_KEY_PATH_BYTES = 700
_UNSAFE_CATEGORIES = ("Cc", "Cf", "Co", "Cs", "Zl", "Zp")
_UNSAFE_CHARS = frozenset("\\")  # a backslash: some stores and clients take it for a slash


@dataclass(frozen=True, slots=True)
class Candidate:
    #: relative, with forward slashes; names that are not UTF-8 are decoded with
    #: ``surrogateescape`` (see :func:`display_name`)
    path: str
    size: int


@dataclass(slots=True)
class Collected:
    files: list[OutputFile] = field(default_factory=list)
    errors: list[ArtifactError] = field(default_factory=list)

    @property
    def skipped(self) -> list[str]:
        return [e.path for e in self.errors]


def display_name(path: str) -> str:
    """``path`` as valid text: bytes that were not UTF-8 become ``\\xNN``."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _safe_segment(segment: str) -> bool:
    return (
        not any(
            ch in _UNSAFE_CHARS or unicodedata.category(ch) in _UNSAFE_CATEGORIES for ch in segment
        )
        and segment == segment.strip()
        and segment not in ("", ".", "..")
    )


def stored_key(path: str) -> str:
    """The part of the object key for a workspace ``path``: the path itself when
    every segment is plain text, else a safe form of it — unsafe characters
    replaced by ``_`` and a short hash of the original added, so two names that
    clean up alike never share a key."""
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        encoded = b""
    segments = path.split("/")
    if encoded and len(encoded) <= MAX_KEY_PATH_BYTES and all(map(_safe_segment, segments)):
        return path
    raw = path.encode("utf-8", "surrogateescape")
    tag = hashlib.sha256(raw).hexdigest()[:12]
    cleaned = []
    for segment in display_name(path).split("/"):
        text = "".join(
            "_" if ch in _UNSAFE_CHARS or unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch
            for ch in segment
        ).strip()
        cleaned.append(text if text not in ("", ".", "..") else "_")
    stem, ext = os.path.splitext(cleaned[-1])
    budget = MAX_KEY_PATH_BYTES // 2
    folders = "/".join(cleaned[:-1]).encode()[:budget].decode("utf-8", "ignore")
    stem = stem.encode()[:100].decode("utf-8", "ignore")
    ext = ext.encode()[:20].decode("utf-8", "ignore")
    name = f"{stem}~{tag}{ext}"
    return f"{folders}/{name}" if folders else name


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
        shown = display_name(item.path)
        original = inputs.get(item.path)
        try:
            if original is not None and await asyncio.to_thread(sha256_file, path) == original:
                continue
        except OSError as exc:
            out.errors.append(ArtifactError(shown, f"unreadable: {exc.strerror or exc}"))
            continue
        if len(out.files) >= max_files:
            out.errors.append(ArtifactError(shown, f"over the bound of {max_files} files"))
            continue
        if total + item.size > max_bytes:
            out.errors.append(ArtifactError(shown, f"over the bound of {max_bytes} bytes in all"))
            continue
        kind = content_type(shown)
        key = prefix + stored_key(item.path)
        try:
            stored = await _upload(store, path, key, kind, max_bytes - total)
        except (OSError, SandboxError, ObjectStoreError) as exc:
            log.warning("%s: %r not stored: %s", workspace, shown, exc)
            out.errors.append(ArtifactError(shown, _reason(exc)))
            continue
        total += stored.size
        out.files.append(OutputFile(shown, stored.key, stored.size, stored.sha256, kind))
    if out.errors:
        log.warning(
            "%s: %d file(s) not stored: %s",
            workspace, len(out.errors), ", ".join(repr(e.path) for e in out.errors[:20]),
        )  # fmt: skip
    return out


async def _upload(store: ObjectStore, path: Path, key: str, kind: str, limit: int) -> StoredObject:
    with os.fdopen(await asyncio.to_thread(_open, path), "rb") as fh:
        return await store.put_stream(key, _chunks(fh), content_type=kind, limit=limit)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return f"unreadable: {exc.strerror or exc}"
    return str(exc)[:500]
