"""Unpacking an uploaded ``.zip`` for a runbook (``jetty.unzip: true``), safely.

The archive is read from the object store into a private temporary directory and
judged before anything is kept: every entry name must be a relative path without
``..``, backslashes, drive letters or control characters; symlinks and other
special entries are refused; at most ``JETTY_UNZIP_MAX_FILES`` files and
``JETTY_UNZIP_MAX_BYTES`` bytes once unpacked, and no entry may expand more than
``JETTY_UNZIP_MAX_RATIO`` times its compressed size (a zip bomb). The sizes an
archive declares are not trusted: the bytes actually written are counted too.
Each entry then goes to the object store under
``<collection>/unzipped/<file-id>/<entry>`` and lands in the workspace at
``uploads/<entry>``, beside the other inputs (the archive itself does not). The
list is kept on the file's record, so a file is unpacked once however many runs
use it.
"""

from __future__ import annotations

import asyncio
import shutil
import stat
import tempfile
import unicodedata
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from shared.objectstore import ObjectStore

_CHUNK = 256 * 1024


class UnzipRefused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class ZipLimits:
    max_files: int
    max_bytes: int
    max_ratio: float


def safe_entry_name(name: str) -> str | None:
    """The entry's relative path if it is safe to place under a directory."""
    if not name or "\\" in name or name.startswith("/") or ":" in name.split("/", 1)[0]:
        return None
    if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in name):
        return None
    parts = name.rstrip("/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        return None
    return "/".join(parts)


def _judge(archive: zipfile.ZipFile, limits: ZipLimits) -> list[tuple[zipfile.ZipInfo, str]]:
    entries: list[tuple[zipfile.ZipInfo, str]] = []
    declared = 0
    for info in archive.infolist():
        name = safe_entry_name(info.filename)
        if name is None:
            raise UnzipRefused(
                "unsafe_zip_entry",
                f"The archive entry {info.filename!r} would land outside its directory.",
            )
        mode = info.external_attr >> 16
        if info.is_dir():
            continue
        if stat.S_IFMT(mode) and not stat.S_ISREG(mode):  # no type bits: a plain file
            raise UnzipRefused(
                "unsafe_zip_entry",
                f"The archive entry {info.filename!r} is not a regular file (a link?).",
            )
        if info.flag_bits & 0x1:
            raise UnzipRefused("invalid_zip", f"The archive entry {info.filename!r} is encrypted.")
        entries.append((info, name))
        declared += info.file_size
        if len(entries) > limits.max_files:
            raise UnzipRefused(
                "zip_too_large", f"The archive has more than {limits.max_files} files."
            )
        if declared > limits.max_bytes:
            raise UnzipRefused(
                "zip_too_large", f"The archive unpacks to more than {limits.max_bytes} bytes."
            )
        if info.file_size > 1024 * 1024 and info.file_size > limits.max_ratio * max(
            info.compress_size, 1
        ):
            raise UnzipRefused(
                "zip_too_large",
                f"The archive entry {info.filename!r} expands more than "
                f"{limits.max_ratio:g} times (a zip bomb?).",
            )
    names = [n for _, n in entries]
    if len(set(names)) != len(names):
        raise UnzipRefused("unsafe_zip_entry", "The archive holds the same path twice.")
    prefixes = {"/".join(n.split("/")[:i]) for n in names for i in range(1, n.count("/") + 1)}
    if prefixes & set(names):
        raise UnzipRefused("unsafe_zip_entry", "The archive holds a file where a directory is.")
    return entries


def _extract(source: Path, target: Path, limits: ZipLimits) -> list[str]:
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UnzipRefused("invalid_zip", f"Not a readable zip archive ({exc}).") from None
    written = 0
    with archive:
        entries = _judge(archive, limits)
        for info, name in entries:
            out = target / name
            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(info) as src, open(out, "xb") as dst:
                    while chunk := src.read(_CHUNK):
                        written += len(chunk)
                        if written > limits.max_bytes:  # the declared sizes lied
                            raise UnzipRefused(
                                "zip_too_large",
                                f"The archive unpacks to more than {limits.max_bytes} bytes.",
                            )
                        dst.write(chunk)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as e:
                raise UnzipRefused("invalid_zip", f"The archive is damaged ({e}).") from None
    return [name for _, name in entries]


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    fh = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(fh.read, _CHUNK):
            yield chunk
    finally:
        fh.close()


async def unpack(
    store: ObjectStore, zip_key: str, dest_prefix: str, limits: ZipLimits, max_zip_bytes: int
) -> list[str]:
    """Unpack the archive at ``zip_key`` into objects under ``dest_prefix``; the
    entry paths, relative to it. Raises :class:`UnzipRefused` (nothing kept) or
    :class:`~shared.objectstore.ObjectStoreError`."""
    workdir = Path(tempfile.mkdtemp(prefix="jetty-unzip-"))
    try:
        source = workdir / "archive.zip"
        await store.get_to_file(zip_key, source, limit=max_zip_bytes)
        target = workdir / "out"
        target.mkdir()
        names = await asyncio.to_thread(_extract, source, target, limits)
        for name in names:
            await store.put_stream(
                dest_prefix + name,
                _file_chunks(target / name),
                content_type="application/octet-stream",
                limit=limits.max_bytes,
            )
        return names
    finally:
        await asyncio.to_thread(shutil.rmtree, workdir, True)
