"""File uploads into the object store: ``POST /api/v1/files/upload`` (multipart
``file``, optional ``collection``) and Jetty's newer ``POST /api/v1/sandbox/upload``
(repeatable ``files``).

Each file part is streamed chunk by chunk from the request into the store under
``<collection>/uploads/<name>`` (hashed and counted on the way, never held whole
in memory) and answered as ``{path: "uploads/<name>", collection, size, sha256,
content_type}``; that ``path`` is what a runbook names in ``jetty.file_paths``.

What must stay true:

* A name is a single path segment: no separators, no ``.``/``..``, no control
  characters, not empty, at most 255 bytes (400 otherwise). Names are taken as
  sent, never rewritten, so the ``path`` a client gets back is the one it expects.
* Re-uploading a name replaces the object (last complete upload wins); an upload
  that fails (413 past ``JETTY_MAX_UPLOAD_BYTES``, a dropped connection) leaves the
  previous object, if any, untouched and no partial object behind.
* ``collection``, when sent, must be the token's (403). If it arrives after file
  parts, the files of this request already stored are removed before the 403.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import AsyncIterator
from urllib.parse import unquote

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import BadHttpMessage
from pydantic import BaseModel, ConfigDict

from services.gateway.state import GATEWAY, Gateway, auth_of
from shared.errors import ApiError, InvalidRequest, PayloadTooLarge, Unavailable
from shared.objectstore import ObjectStore, ObjectStoreError, ObjectTooLarge, StoredObject

log = logging.getLogger(__name__)

CHUNK_SIZE = 256 * 1024
MAX_NAME_BYTES = 255
UPLOADS = "uploads"


class Forbidden(ApiError):
    status = 403
    error_type = "permission_error"


class UploadedFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    collection: str
    size: int
    sha256: str
    content_type: str


class SandboxUpload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    files: list[UploadedFile]


def valid_name(raw: str | None) -> str:
    """The file name as sent, if it is one safe path segment; else 400.

    Percent-escapes are decoded first: aiohttp and browsers escape some characters
    of a multipart filename (aiohttp sends ``../x`` as ``..%2Fx``), and a name must
    be judged by what it decodes to. So a name meant to contain ``%41`` literally
    is stored as ``A``."""
    try:
        name = unicodedata.normalize("NFC", unquote(raw or "", errors="strict"))
    except UnicodeDecodeError:
        name = "\x00"  # rejected below, as undecodable
    problem = None
    if not name.strip():
        problem = "is empty"
    elif name in (".", "..") or "/" in name or "\\" in name:
        problem = "must be a plain file name (no directories, no '..')"
    elif any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in name):
        problem = "contains control characters"
    elif name != name.strip():
        problem = "starts or ends with whitespace"
    elif len(name.encode()) > MAX_NAME_BYTES:
        problem = f"is longer than {MAX_NAME_BYTES} bytes"
    if problem:
        raise InvalidRequest(f"The file name {raw!r} {problem}.", param="file", code="invalid_name")
    return name


async def object_store(gw: Gateway) -> ObjectStore:
    # Created on first use, so the gateway serves chat while the store is down.
    if gw.objects is None:
        store = ObjectStore.from_settings(gw.settings)
        try:
            await store.ensure_bucket()
        except ObjectStoreError as exc:
            raise store_unavailable(exc) from None
        gw.objects = store
    return gw.objects


async def prepare_object_store(gw: Gateway) -> None:
    """At start: make the bucket as soon as the store answers."""
    store = ObjectStore.from_settings(gw.settings)
    await store.ensure_bucket_retrying(log)
    if gw.objects is None:
        gw.objects = store


def store_unavailable(exc: BaseException) -> Unavailable:
    log.warning("object store unavailable: %s", exc)
    return Unavailable(
        "The object store is unavailable; please retry shortly.",
        code="store_unavailable",
        retry_after=1,
    )


async def _chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(CHUNK_SIZE):
        yield chunk


async def _put(gw: Gateway, collection: str, part: BodyPartReader) -> UploadedFile:
    name = valid_name(part.filename)
    content_type = part.headers.get("Content-Type") or "application/octet-stream"
    store = await object_store(gw)
    limit = gw.settings.max_upload_bytes
    try:
        stored = await store.put_stream(
            f"{collection}/{UPLOADS}/{name}", _chunks(part), content_type=content_type, limit=limit
        )
    except ObjectTooLarge:
        raise PayloadTooLarge(
            f"The file {name!r} is larger than the limit of {limit} bytes.",
            param="file",
            code="file_too_large",
        ) from None
    except ObjectStoreError as exc:
        raise store_unavailable(exc) from None
    return _answer(collection, name, stored)


def _answer(collection: str, name: str, stored: StoredObject) -> UploadedFile:
    return UploadedFile(
        path=f"{UPLOADS}/{name}",
        collection=collection,
        size=stored.size,
        sha256=stored.sha256,
        content_type=stored.content_type,
    )


async def _collection_field(part: BodyPartReader) -> str:
    # A small text field: bounded read (read() would take whatever is sent).
    value = b""
    while chunk := await part.read_chunk(1024):
        value += chunk
        if len(value) > 1024:
            raise InvalidRequest("The 'collection' field is too long.", param="collection")
    return value.decode(errors="replace").strip()


async def _next_part(reader: MultipartReader) -> BodyPartReader | MultipartReader | None:
    try:
        return await reader.next()
    except (BadHttpMessage, ValueError) as exc:  # a malformed part header or boundary
        raise InvalidRequest(
            f"Malformed multipart body: {exc.__class__.__name__}.", code="invalid_multipart"
        ) from None


async def _receive(request: web.Request, field: str, *, many: bool) -> list[UploadedFile]:
    gw = request.app[GATEWAY]
    own = auth_of(request).collection
    if not request.content_type.startswith("multipart/"):
        raise InvalidRequest("Send the file as multipart/form-data.", code="invalid_content_type")
    reader = await request.multipart()
    stored: list[UploadedFile] = []
    while (part := await _next_part(reader)) is not None:
        if isinstance(part, MultipartReader):
            raise InvalidRequest("Nested multipart bodies are not accepted.")
        if part.name == "collection":
            collection = await _collection_field(part)
            if collection != own:
                for done in stored:  # see the module docstring
                    await (await object_store(gw)).remove(f"{own}/{done.path}")
                raise Forbidden(
                    f"This token cannot write to collection {collection!r}.",
                    param="collection",
                    code="collection_forbidden",
                )
        elif part.name == field:
            if stored and not many:
                raise InvalidRequest(
                    f"Send one {field!r} part per request (the first one was stored).",
                    param=field,
                )
            stored.append(await _put(gw, own, part))
        else:
            await part.release()  # unknown fields are ignored
    if not stored:
        raise InvalidRequest(f"No {field!r} file part in the request.", param=field)
    return stored


async def upload_file(request: web.Request) -> web.Response:
    (stored,) = await _receive(request, "file", many=False)
    return web.json_response(stored.model_dump())


async def sandbox_upload(request: web.Request) -> web.Response:
    files = await _receive(request, "files", many=True)
    return web.json_response(SandboxUpload(files=files).model_dump())


def routes() -> list[web.RouteDef]:
    return [
        web.post("/api/v1/files/upload", upload_file),
        web.post("/api/v1/sandbox/upload", sandbox_upload),
    ]
