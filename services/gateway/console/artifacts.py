"""Artifacts in the console: previews, downloads, and the Cancel button's route.

A preview reads at most :data:`PREVIEW_BYTES` of the object: text and JSON as
escaped text (JSON pretty-printed), Markdown rendered and sanitised, CSV as a
table of its first :data:`CSV_ROWS` rows, and raster images inline from a route
that serves only those types, under a ``sandbox`` CSP. Anything else (SVG and
HTML included) is offered as a download only. Downloads and cancel are the API's
own handlers, called with the session's token record.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import aiohttp_jinja2
import asyncpg
import orjson
from aiohttp import web

from services.gateway import runbook_routes, trajectories
from services.gateway.console import guard
from services.gateway.files import object_store, store_unavailable
from services.gateway.state import GATEWAY, auth_of
from shared.db import trajectories as queries
from shared.db.trajectories import ArtifactRecord
from shared.errors import ApiError, NotFound
from shared.ids import is_trajectory_id
from shared.objectstore import ObjectStoreError

PREVIEW_BYTES = 1024 * 1024
IMAGE_BYTES = 10 * 1024 * 1024
CSV_ROWS = 500
IMAGES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})


def kind_of(path: str, media_type: str | None) -> str:
    """How the console previews a file: markdown, csv, json, image, text or none."""
    media = (media_type or "").split(";")[0].strip().lower()
    lower = path.lower()
    if media in IMAGES:
        return "image"
    if lower.endswith((".md", ".markdown")) or media == "text/markdown":
        return "markdown"
    if lower.endswith(".csv") or media == "text/csv":
        return "csv"
    if lower.endswith(".json") or media == "application/json":
        return "json"
    if (media.startswith("text/") and media != "text/html") or lower.endswith((".txt", ".log")):
        return "text"
    return "none"


async def _record(request: web.Request) -> ArtifactRecord:
    trajectory_id = request.match_info["trajectory_id"]
    path = request.match_info["path"]
    if not is_trajectory_id(trajectory_id):
        raise trajectories.not_found(trajectory_id)
    gw = request.app[GATEWAY]
    pool = await trajectories.open_pool(gw)
    try:
        record = await queries.get_artifact(pool, auth_of(request).collection, trajectory_id, path)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise trajectories.db_unavailable(exc) from None
    if record is None:
        raise NotFound(f"No artifact '{path}'.", code="not_found")
    return record


async def _head(request: web.Request, record: ArtifactRecord, limit: int) -> bytes:
    store = await object_store(request.app[GATEWAY])
    out = bytearray()
    try:
        async for chunk in store.iter_chunks(record.key, 256 * 1024):
            out += chunk
            if len(out) >= limit:
                break
    except ObjectStoreError as exc:
        raise store_unavailable(exc) from None
    return bytes(out[:limit])


def csv_table(text: str, limit: int = CSV_ROWS) -> tuple[list[list[str]], bool]:
    rows: list[list[str]] = []
    reader = csv.reader(io.StringIO(text))
    try:
        for row in reader:
            if len(rows) >= limit + 1:
                return rows, True
            rows.append([cell[:2000] for cell in row[:100]])
    except csv.Error:
        pass
    return rows, False


async def preview(request: web.Request) -> web.Response:
    record = await _record(request)
    kind = kind_of(record.path, record.content_type)
    context: dict[str, Any] = {
        "a": record,
        "kind": kind,
        "trajectory_id": record.trajectory_id,
        "collection": auth_of(request).collection,
        "csrf": guard.session_of(request).csrf,
        "page": "artifact",
        "oob": False,
        "truncated": record.size > PREVIEW_BYTES,
    }
    if kind in ("markdown", "csv", "json", "text"):
        text = (await _head(request, record, PREVIEW_BYTES)).decode("utf-8", "replace")
        context["text"] = text
        if kind == "csv":
            context["table"], context["more_rows"] = csv_table(text)
        if kind == "json":
            try:
                context["data"] = orjson.loads(text)
            except orjson.JSONDecodeError:
                context["kind"] = "text"
    template = "_artifact.html" if "HX-Request" in request.headers else "artifact.html"
    return aiohttp_jinja2.render_template(template, request, context)


async def image(request: web.Request) -> web.Response:
    record = await _record(request)
    media = record.content_type.split(";")[0].strip().lower()
    if media not in IMAGES or record.size > IMAGE_BYTES:
        raise NotFound("No inline preview for this file.", code="not_found")
    body = await _head(request, record, IMAGE_BYTES)
    return web.Response(
        body=body,
        content_type=media,
        headers={
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Cache-Control": "private, max-age=300",
        },
    )


async def download(request: web.Request) -> web.StreamResponse:
    return await runbook_routes.download_artifact(request)


async def cancel(request: web.Request) -> web.Response:
    trajectory_id = request.match_info["trajectory_id"]
    try:
        await runbook_routes.cancel_run(request)
    except ApiError as exc:
        if exc.status != 409:  # already ended: the page shows how
            raise
    raise web.HTTPSeeOther(f"{guard.PREFIX}/trajectories/{trajectory_id}")
