"""What a runbook request takes from the files API: ``jetty.files`` as workspace
inputs (unpacked first with ``jetty.unzip``) and ``jetty.runbook_path``.

Every id is checked before anything runs; unknown ids fail the request with one
400 naming all of them (``param: jetty.files``).
"""

from __future__ import annotations

import contextlib

from nats.errors import Error as NatsError

from services.gateway.files import object_store, store_unavailable
from services.gateway.files_api.routes import bus_unavailable, records_of
from services.gateway.files_api.store import StoredFile, is_file_id
from services.gateway.files_api.unzip import UnzipRefused, ZipLimits, unpack
from services.gateway.state import Gateway
from shared.errors import InvalidRequest
from shared.events.runbook import InputObject
from shared.objectstore import ObjectStoreError, ObjectTooLarge

UPLOADS = "uploads"
MAX_RUNBOOK_BYTES = 1024 * 1024


async def _lookup(gw: Gateway, collection: str, ids: list[str], param: str) -> list[StoredFile]:
    found: list[StoredFile] = []
    missing: list[str] = []
    for file_id in ids:
        try:
            record = await records_of(gw).get(collection, file_id)
        except (NatsError, TimeoutError):
            raise bus_unavailable() from None
        if record is None:
            missing.append(file_id)
        else:
            found.append(record)
    if missing:
        raise InvalidRequest(
            f"Unknown file id(s) in collection '{collection}': {', '.join(missing)}. "
            "Upload them first with POST /api/v1/files.",
            param=param,
            code="file_not_found",
        )
    return found


def _is_zip(record: StoredFile) -> bool:
    return record.file.filename.lower().endswith(".zip")


async def _unzipped(gw: Gateway, record: StoredFile, index: int) -> list[InputObject]:
    prefix = f"{record.collection}/unzipped/{record.file.id}/"
    names = record.unzipped
    if names is None:
        s = gw.settings
        limits = ZipLimits(s.unzip_max_files, s.unzip_max_bytes, s.unzip_max_ratio)
        try:
            names = await unpack(
                await object_store(gw), record.key, prefix, limits, s.max_upload_bytes
            )
        except UnzipRefused as refused:
            raise InvalidRequest(
                f"{record.file.filename}: {refused.message}",
                param=f"jetty.files[{index}]",
                code=refused.code,
            ) from None
        except ObjectTooLarge:
            raise InvalidRequest(
                f"{record.file.filename} is too large to unpack.",
                param=f"jetty.files[{index}]",
                code="zip_too_large",
            ) from None
        except ObjectStoreError as exc:
            raise store_unavailable(exc) from None
        with contextlib.suppress(NatsError, TimeoutError):  # else: unpacked again next time
            await records_of(gw).put(record.model_copy(update={"unzipped": names}))
    return [
        InputObject(path=f"{UPLOADS}/{name}", key=prefix + name, file_id=record.file.id)
        for name in names
    ]


async def file_inputs(
    gw: Gateway, collection: str, ids: list[str], *, unzip: bool, taken: set[str]
) -> list[InputObject]:
    """The workspace inputs ``jetty.files`` names; ``taken`` holds the workspace
    paths already in use (``jetty.file_paths``): a second file at one is a 400."""
    ids = list(dict.fromkeys(ids))
    for index, file_id in enumerate(ids):
        if not is_file_id(file_id):
            raise InvalidRequest(
                f"Invalid file id {file_id!r}: use the 'id' POST /api/v1/files answered.",
                param=f"jetty.files[{index}]",
                code="invalid_file_id",
            )
    inputs: list[InputObject] = []
    for index, record in enumerate(await _lookup(gw, collection, ids, "jetty.files")):
        if unzip and _is_zip(record):
            placed = await _unzipped(gw, record, index)
        else:
            placed = [
                InputObject(
                    path=f"{UPLOADS}/{record.file.filename}", key=record.key, file_id=record.file.id
                )
            ]
        for item in placed:
            if item.path in taken:
                raise InvalidRequest(
                    f"Two inputs would land at '{item.path}' in the workspace.",
                    param=f"jetty.files[{index}]",
                    code="duplicate_input",
                )
            taken.add(item.path)
        inputs.extend(placed)
    return inputs


async def read_runbook_file(gw: Gateway, collection: str, name: str) -> str:
    """The Markdown a ``jetty.runbook_path`` names: a ``file-…`` id of the files API
    or an ``uploads/<name>`` path of ``/api/v1/files/upload``."""
    param = "jetty.runbook_path"
    if is_file_id(name):
        (record,) = await _lookup(gw, collection, [name], param)
        key, size = record.key, record.file.bytes
    else:
        parts = name.split("/")
        if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise InvalidRequest(
                f"Invalid runbook path {name!r}: a file id or an 'uploads/<name>' path.",
                param=param,
                code="invalid_file_path",
            )
        key = f"{collection}/{name}"
        try:
            info = await (await object_store(gw)).stat(key)
        except ObjectStoreError as exc:
            raise store_unavailable(exc) from None
        if info is None:
            raise InvalidRequest(
                f"File '{name}' does not exist in collection '{collection}'.",
                param=param,
                code="file_not_found",
            )
        size = info.size
    if size > MAX_RUNBOOK_BYTES:
        raise InvalidRequest(
            f"The runbook file is larger than {MAX_RUNBOOK_BYTES} bytes.",
            param=param,
            code="runbook_too_large",
        )
    try:
        raw = await (await object_store(gw)).get(key)
    except ObjectStoreError as exc:
        raise store_unavailable(exc) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(
            "The runbook file is not UTF-8 text.", param=param, code="invalid_runbook"
        ) from None
