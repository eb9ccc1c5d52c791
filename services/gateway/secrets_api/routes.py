"""``/api/v1/secrets``: a collection's secrets, values write-only.

* ``PUT /api/v1/secrets/{name}`` ``{"value": "..."}`` (or ``POST /api/v1/secrets``
  ``{"name", "value"}``) sets one; the answer is ``{name, created_at,
  updated_at}`` — never the value;
* ``GET /api/v1/secrets`` lists names and times; ``DELETE /api/v1/secrets/{name}``.

Names are environment-variable names (``^[A-Z_][A-Z0-9_]*$``, at most 128, not
one the sandbox sets itself); values are 4 bytes to 32 KiB of text. Every run of
the collection gets them as environment variables. Request bodies of these routes
are never logged or recorded.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web
from nats.errors import Error as NatsError

from services.gateway.secrets_api.admin import require_admin
from services.gateway.state import GATEWAY, Gateway, auth_of
from shared.errors import ApiError, InvalidRequest, NotFound, Unavailable
from shared.secrets import (
    MAX_VALUE_BYTES,
    MIN_VALUE_CHARS,
    NAME_RE,
    RESERVED,
    CollectionSecrets,
    RunSecrets,
    SecretBox,
    SecretsError,
)

MAX_BODY = MAX_VALUE_BYTES + 4096


def not_configured() -> ApiError:
    return ApiError(
        "Secrets are not configured on this server (JETTY_SECRETS_KEY).",
        status=503,
        error_type="server_error",
        code="secrets_not_configured",
    )


def box_of(gw: Gateway) -> SecretBox:
    found = gw.extensions.get("secret_box")
    if isinstance(found, SecretBox):
        return found
    try:
        box = SecretBox.from_setting(gw.settings.secrets_key)
    except SecretsError:
        raise not_configured() from None
    gw.extensions["secret_box"] = box
    return box


def collection_secrets(gw: Gateway) -> CollectionSecrets:
    found = gw.extensions.get("collection_secrets")
    if not isinstance(found, CollectionSecrets):
        found = gw.extensions["collection_secrets"] = CollectionSecrets(gw.js, box_of(gw))
    return found


def run_secrets(gw: Gateway) -> RunSecrets:
    found = gw.extensions.get("run_secrets")
    if not isinstance(found, RunSecrets):
        found = gw.extensions["run_secrets"] = RunSecrets(gw.js, box_of(gw))
    return found


def unavailable() -> Unavailable:
    return Unavailable("The secret store is unavailable; retry.", code="secrets_unavailable")


def check_name(name: str, param: str) -> None:
    if not NAME_RE.match(name) or name in RESERVED:
        raise InvalidRequest(
            f"Invalid secret name {name!r}: an environment variable name "
            "(A-Z, 0-9, _; not starting with a digit; not PATH, HOME and the like).",
            param=param,
            code="invalid_secret_name",
        )


def check_value(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequest("A secret's value must be a string.", param=param)
    if len(value) < MIN_VALUE_CHARS or len(value.encode()) > MAX_VALUE_BYTES:
        raise InvalidRequest(
            f"A secret's value must be {MIN_VALUE_CHARS} characters to "
            f"{MAX_VALUE_BYTES} bytes (shorter values cannot be masked reliably).",
            param=param,
            code="invalid_secret_value",
        )
    if "\x00" in value:
        raise InvalidRequest("A secret's value cannot contain NUL.", param=param)
    return value


async def _json(request: web.Request) -> dict[str, Any]:
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise InvalidRequest("The request body is too large.", code="body_too_large")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("The request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(doc, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return doc


async def _set(request: web.Request, name: str, doc: dict[str, Any]) -> web.Response:
    gw = request.app[GATEWAY]
    auth = auth_of(request)
    require_admin(auth)
    check_name(name, "name")
    unknown = set(doc) - {"name", "value"}
    if unknown:
        raise InvalidRequest(f"Unknown field(s): {', '.join(sorted(unknown))}.")
    value = check_value(doc.get("value"), "value")
    try:
        meta = await collection_secrets(gw).put(auth.collection, name, value, int(time.time()))
    except (NatsError, TimeoutError):
        raise unavailable() from None
    return web.json_response(meta.model_dump())


async def put_secret(request: web.Request) -> web.Response:
    doc = await _json(request)
    return await _set(request, request.match_info["name"], doc)


async def create_secret(request: web.Request) -> web.Response:
    doc = await _json(request)
    name = doc.get("name")
    if not isinstance(name, str):
        raise InvalidRequest("Missing 'name'.", param="name", code="missing_required_parameter")
    return await _set(request, name, doc)


async def list_secrets(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    auth = auth_of(request)
    require_admin(auth)
    try:
        names = await collection_secrets(gw).names(auth.collection)
    except (NatsError, TimeoutError):
        raise unavailable() from None
    return web.json_response({"object": "list", "data": [m.model_dump() for m in names]})


async def delete_secret(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    auth = auth_of(request)
    require_admin(auth)
    name = request.match_info["name"]
    try:
        found = await collection_secrets(gw).delete(auth.collection, name)
    except (NatsError, TimeoutError):
        raise unavailable() from None
    if not found:
        raise NotFound(f"No secret named '{name}'.", param="name", code="not_found")
    return web.json_response({"name": name, "deleted": True})


def routes() -> list[web.RouteDef]:
    return [
        web.get("/api/v1/secrets", list_secrets),
        web.post("/api/v1/secrets", create_secret),
        web.put("/api/v1/secrets/{name}", put_secret),
        web.delete("/api/v1/secrets/{name}", delete_secret),
    ]
