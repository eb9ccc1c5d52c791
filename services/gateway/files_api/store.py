"""Where uploaded files live: the bytes in the object store under
``<collection>/files/<file-id>``, the OpenAI ``file`` object describing them in
the JetStream key-value bucket ``jetty_files`` (key ``<collection>.<file-id>``).

The record is written only after the bytes are stored, and removed before them,
so a listed file always has its content. It is state, not an event: files are
inputs, not part of any trajectory's record (a run that used one records which
in its ``runbook.requested`` event).
"""

from __future__ import annotations

import secrets
import string
from typing import Any, Literal

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from pydantic import BaseModel, ConfigDict

from shared.kv import open_bucket, values_under

FILES_BUCKET = "jetty_files"
_ALPHABET = string.ascii_letters + string.digits
FILE_ID_LENGTH = 24


class FileObject(BaseModel):
    """OpenAI's ``file`` object, as its SDKs parse it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    status_details: str | None = None
    expires_at: int | None = None


class StoredFile(BaseModel):
    """The bucket's record: the OpenAI object plus what only we need."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    file: FileObject
    collection: str
    key: str
    sha256: str
    content_type: str
    #: entry paths of a zip once unpacked for a runbook (``unzip.py``)
    unzipped: list[str] | None = None


def new_file_id() -> str:
    return "file-" + "".join(secrets.choice(_ALPHABET) for _ in range(FILE_ID_LENGTH))


def is_file_id(value: str) -> bool:
    rest = value.removeprefix("file-")
    return rest != value and len(rest) == FILE_ID_LENGTH and all(c in _ALPHABET for c in rest)


def object_key(collection: str, file_id: str) -> str:
    return f"{collection}/files/{file_id}"


class FileRecords:
    """Reads and writes of the ``jetty_files`` bucket."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._kv: Any = None

    async def _bucket(self) -> Any:
        if self._kv is None:
            self._kv = await open_bucket(
                self._js, FILES_BUCKET, "OpenAI-style file objects (bytes in the object store)"
            )
        return self._kv

    async def put(self, record: StoredFile) -> None:
        kv = await self._bucket()
        await kv.put(f"{record.collection}.{record.file.id}", record.model_dump_json().encode())

    async def get(self, collection: str, file_id: str) -> StoredFile | None:
        if not is_file_id(file_id):
            return None
        kv = await self._bucket()
        try:
            entry = await kv.get(f"{collection}.{file_id}")
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return StoredFile.model_validate_json(entry.value)

    async def delete(self, collection: str, file_id: str) -> None:
        kv = await self._bucket()
        await kv.purge(f"{collection}.{file_id}")

    async def list(self, collection: str) -> list[StoredFile]:
        """Every file of ``collection``, oldest first."""
        kv = await self._bucket()
        out = [StoredFile.model_validate_json(v) for v in await values_under(kv, f"{collection}.>")]
        out.sort(key=lambda f: (f.file.created_at, f.file.id))
        return out
