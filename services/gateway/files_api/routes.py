"""``/api/v1/files``: OpenAI's files API over our object store.

``POST`` (multipart ``file`` and ``purpose``) answers a ``file`` object with a
``file-…`` id; ``GET`` lists a collection's files (``purpose``, ``order``,
``limit``, ``after`` as OpenAI's list takes them); ``GET /{id}``, ``GET
/{id}/content`` and ``DELETE /{id}``. Files belong to the token's collection;
another collection's id is answered like an unknown one (404).

The name rules are those of ``/api/v1/files/upload`` (one path segment), because
a file given to a runbook lands in its workspace as ``uploads/<filename>``.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any
from urllib.parse import quote

from aiohttp import BodyPartReader, MultipartReader, web
from nats.errors import Error as NatsError

from services.gateway.files import _chunks, _next_part, object_store, store_unavailable, valid_name
from services.gateway.files_api.store import (
    FileObject,
    FileRecords,
    StoredFile,
    new_file_id,
    object_key,
)
from services.gateway.state import GATEWAY, Gateway, auth_of
from shared.errors import InvalidRequest, NotFound, PayloadTooLarge, Unavailable
from shared.objectstore import ObjectStoreError, ObjectTooLarge

PURPOSES = frozenset(
    {"assistants", "batch", "fine-tune", "vision", "user_data", "evals", "runbook"}
)
_CHUNK = 256 * 1024


def records(request: web.Request) -> FileRecords:
    return records_of(request.app[GATEWAY])


def records_of(gw: Gateway) -> FileRecords:
    found = gw.extensions.get("files")
    if not isinstance(found, FileRecords):
        found = gw.extensions["files"] = FileRecords(gw.js)
    return found


def bus_unavailable() -> Unavailable:
    return Unavailable(
        "The file index is unavailable; please retry shortly.", code="files_unavailable"
    )


def no_such_file(file_id: str, param: str = "file_id") -> NotFound:
    return NotFound(f"No such File object: {file_id}", param=param, code="file_not_found")


async def _small_field(part: BodyPartReader, name: str) -> str:
    value = b""
    while chunk := await part.read_chunk(1024):
        value += chunk
        if len(value) > 1024:
            raise InvalidRequest(f"The '{name}' field is too long.", param=name)
    return value.decode(errors="replace").strip()


async def create_file(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    collection = auth_of(request).collection
    if not request.content_type.startswith("multipart/"):
        raise InvalidRequest(
            "Send the file as multipart/form-data with 'file' and 'purpose'.",
            code="invalid_content_type",
        )
    reader = await request.multipart()
    purpose: str | None = None
    stored: StoredFile | None = None
    store = await object_store(gw)
    try:
        while (part := await _next_part(reader)) is not None:
            if isinstance(part, MultipartReader):
                raise InvalidRequest("Nested multipart bodies are not accepted.")
            if part.name == "purpose":
                purpose = await _small_field(part, "purpose")
            elif part.name == "file":
                if stored is not None:
                    raise InvalidRequest("Send one 'file' part per request.", param="file")
                stored = await _store(gw, collection, part)
            else:
                await part.release()
        if stored is None:
            raise InvalidRequest("No 'file' part in the request.", param="file")
        if purpose is None:
            raise InvalidRequest(
                "Missing required parameter: 'purpose'.",
                param="purpose",
                code="missing_required_parameter",
            )
        if purpose not in PURPOSES:
            raise InvalidRequest(
                f"Invalid value for 'purpose': one of {', '.join(sorted(PURPOSES))}.",
                param="purpose",
                code="invalid_value",
            )
        stored = stored.model_copy(
            update={"file": stored.file.model_copy(update={"purpose": purpose})}
        )
        try:
            await records(request).put(stored)
        except (NatsError, TimeoutError):
            raise bus_unavailable() from None
    except BaseException:
        if stored is not None:  # nothing half-made stays behind
            with contextlib.suppress(ObjectStoreError):
                await store.remove(stored.key)
        raise
    return web.json_response(stored.file.model_dump())


async def _store(gw: Gateway, collection: str, part: BodyPartReader) -> StoredFile:
    name = valid_name(part.filename)
    content_type = part.headers.get("Content-Type") or "application/octet-stream"
    file_id = new_file_id()
    key = object_key(collection, file_id)
    limit = gw.settings.max_upload_bytes
    store = await object_store(gw)
    try:
        info = await store.put_stream(key, _chunks(part), content_type=content_type, limit=limit)
    except ObjectTooLarge:
        raise PayloadTooLarge(
            f"The file {name!r} is larger than the limit of {limit} bytes.",
            param="file",
            code="file_too_large",
        ) from None
    except ObjectStoreError as exc:
        raise store_unavailable(exc) from None
    return StoredFile(
        file=FileObject(
            id=file_id, bytes=info.size, created_at=int(time.time()), filename=name, purpose=""
        ),
        collection=collection,
        key=key,
        sha256=info.sha256,
        content_type=info.content_type,
    )


async def _find(request: web.Request) -> StoredFile:
    file_id = request.match_info["file_id"]
    try:
        found = await records(request).get(auth_of(request).collection, file_id)
    except (NatsError, TimeoutError):
        raise bus_unavailable() from None
    if found is None:
        raise no_such_file(file_id)
    return found


async def list_files(request: web.Request) -> web.Response:
    q = request.query
    order = q.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("Invalid value for 'order': 'asc' or 'desc'.", param="order")
    try:
        limit = int(q.get("limit", "10000"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 10000:
        raise InvalidRequest(
            "Invalid value for 'limit': an integer from 1 to 10000.", param="limit"
        )
    try:
        files = await records(request).list(auth_of(request).collection)
    except (NatsError, TimeoutError):
        raise bus_unavailable() from None
    objects = [f.file for f in files if "purpose" not in q or f.file.purpose == q["purpose"]]
    if order == "desc":
        objects.reverse()
    if "after" in q:
        ids = [o.id for o in objects]
        if q["after"] not in ids:
            raise no_such_file(q["after"], param="after")
        objects = objects[ids.index(q["after"]) + 1 :]
    page = objects[:limit]
    body: dict[str, Any] = {
        "object": "list",
        "data": [o.model_dump() for o in page],
        "first_id": page[0].id if page else None,
        "last_id": page[-1].id if page else None,
        "has_more": len(objects) > limit,
    }
    return web.json_response(body)


async def retrieve_file(request: web.Request) -> web.Response:
    return web.json_response((await _find(request)).file.model_dump())


async def file_content(request: web.Request) -> web.StreamResponse:
    found = await _find(request)
    store = await object_store(request.app[GATEWAY])
    try:
        chunks = store.iter_chunks(found.key, _CHUNK)
        first = await anext(chunks, b"")
    except ObjectStoreError as exc:
        raise store_unavailable(exc) from None
    response = web.StreamResponse(
        headers={
            "Content-Type": found.content_type,
            "Content-Length": str(found.file.bytes),
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(found.file.filename)}",
            "ETag": f'"{found.sha256}"',
        }
    )
    await response.prepare(request)
    await response.write(first)
    async for chunk in chunks:
        await response.write(chunk)
    await response.write_eof()
    return response


async def delete_file(request: web.Request) -> web.Response:
    found = await _find(request)
    try:
        await records(request).delete(found.collection, found.file.id)
    except (NatsError, TimeoutError):
        raise bus_unavailable() from None
    try:
        await (await object_store(request.app[GATEWAY])).remove(found.key)
    except ObjectStoreError as exc:
        raise store_unavailable(exc) from None
    return web.json_response({"id": found.file.id, "object": "file", "deleted": True})


def routes() -> list[web.RouteDef]:
    return [
        web.post("/api/v1/files", create_file),
        web.get("/api/v1/files", list_files),
        web.get("/api/v1/files/{file_id}", retrieve_file),
        web.get("/api/v1/files/{file_id}/content", file_content),
        web.delete("/api/v1/files/{file_id}", delete_file),
    ]
