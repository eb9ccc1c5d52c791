"""``GET /api/v1/trajectories/{id}/download``: every artifact of a run as one zip,
streamed.

The archive is written as it is sent (entries with data descriptors, ZIP64 when
needed), one object at a time from the store, so neither the gateway's memory nor
its disk holds a whole run. Entry names are the artifacts' workspace paths; the
zip is named ``<task>-<trajectory id>.zip``. A run without artifacts answers an
empty (valid) zip; an unknown trajectory, or another collection's, is 404.
"""

from __future__ import annotations

import zipfile
from datetime import UTC
from typing import IO

import asyncpg
from aiohttp import web

from services.gateway import trajectories
from services.gateway.files import object_store, store_unavailable
from services.gateway.state import GATEWAY, auth_of
from shared.db.parity import list_artifacts
from shared.objectstore import ObjectStoreError

_CHUNK = 256 * 1024


class _Sink:
    """A write-only, non-seekable file for :class:`zipfile.ZipFile`: what it is
    given waits in ``pending`` until the handler sends it."""

    def __init__(self) -> None:
        self.pending: list[bytes] = []
        self.offset = 0

    def write(self, data: bytes, /) -> int:
        self.pending.append(bytes(data))
        self.offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self.offset

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self.pending)
        self.pending.clear()
        return out


async def download_all(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    trajectory_id = request.match_info["trajectory_id"]
    view = await trajectories.read_trajectory(gw, auth_of(request).collection, trajectory_id)
    store = await object_store(gw)
    pool = await trajectories.open_pool(gw)
    try:
        artifacts = await list_artifacts(pool, view.collection, trajectory_id)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise trajectories.db_unavailable(exc) from None
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/zip",
            "Content-Disposition": f'attachment; filename="{view.task}-{trajectory_id}.zip"',
        }
    )
    sink = _Sink()
    archive = zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED)
    prepared = False
    for record in artifacts:
        stamp = record.stored_at.astimezone(UTC)
        info = zipfile.ZipInfo(record.path, stamp.timetuple()[:6])
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        try:
            chunks = store.iter_chunks(record.key, _CHUNK)
            first = await anext(chunks, b"")
        except ObjectStoreError as exc:
            if prepared:
                raise ConnectionResetError("object store failed mid-download") from exc
            raise store_unavailable(exc) from None
        if not prepared:
            await response.prepare(request)
            prepared = True
        entry: IO[bytes] = archive.open(info, "w", force_zip64=record.size > 2**31)
        entry.write(first)
        await response.write(sink.take())
        async for chunk in chunks:
            entry.write(chunk)
            await response.write(sink.take())
        entry.close()
    archive.close()
    if not prepared:
        await response.prepare(request)
    await response.write(sink.take())
    await response.write_eof()
    return response


def routes() -> list[web.RouteDef]:
    return [web.get("/api/v1/trajectories/{trajectory_id}/download", download_all)]
