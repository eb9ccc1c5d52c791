"""``/api/v1/keys``: an ``admin`` key manages the keys of its own collection.

``POST`` creates (the secret is in the answer once, as ``key``), ``GET`` lists or
gets, ``PATCH /{id}`` changes the name, scopes, expiry, allowed models, limits,
budget or metadata, ``POST /{id}/rotate`` issues a new secret (the old one keeps
working for ``grace_seconds``), ``DELETE /{id}`` revokes. Every change writes the
token records (KV ``jetty_tokens``, which every gateway watches) and then a
``key.*`` event for the record. Nothing here reads PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.gateway.scopes import require_scope
from services.gateway.state import GATEWAY, Gateway, auth_of
from shared.errors import InvalidRequest, NotFound
from shared.keys import (
    DEFAULT_SCOPES,
    KeyBudget,
    KeyCreated,
    KeyInfo,
    KeyLimits,
    KeyRevoked,
    KeyRotated,
    KeyUpdated,
    KeyUsage,
    Scope,
)
from shared.tokens import TokenRecord, generate_token, hash_token

MAX_BODY = 64 * 1024
MAX_GRACE_SECONDS = 30 * 24 * 3600
DEFAULT_GRACE_SECONDS = 3600


class KeyFields(BaseModel):
    """The fields a client may set (create: all optional but sensible defaults)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=200)
    scopes: list[Scope] | None = Field(default=None, min_length=1, max_length=3)
    expires_at: datetime | None = None
    allowed_models: list[str] | None = Field(default=None, max_length=100)
    limits: KeyLimits | None = None
    budget: KeyBudget | None = None
    metadata: dict[str, Any] | None = None


class RotateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_seconds: int = Field(default=DEFAULT_GRACE_SECONDS, ge=0, le=MAX_GRACE_SECONDS)


async def _body(request: web.Request, model: type[BaseModel]) -> Any:
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise InvalidRequest("The request body is too large.", code="request_too_large")
    try:
        data = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise InvalidRequest("The request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise InvalidRequest(
            f"Invalid value for '{param}': {first['msg']}.", param=param, code="invalid_value"
        ) from None


def _changes(fields: KeyFields) -> dict[str, Any]:
    """The :class:`TokenRecord` updates the set fields ask for."""
    out: dict[str, Any] = {}
    for name in fields.model_fields_set:
        value = getattr(fields, name)
        if name == "name":
            out[name] = value or ""
        elif name == "scopes":
            if value is None:
                raise InvalidRequest("'scopes' may not be null.", param="scopes")
            out[name] = tuple(dict.fromkeys(value))
        elif name == "allowed_models":
            out[name] = tuple(value) if value is not None else None
        elif name == "limits":
            out[name] = value if value is not None else KeyLimits()
        elif name == "metadata":
            out[name] = value or {}
        elif name == "expires_at":
            if value is not None and value.tzinfo is None:
                raise InvalidRequest(
                    "'expires_at' needs a time zone (RFC 3339).", param="expires_at"
                )
            out[name] = value
        else:
            out[name] = value
    return out


def key_object(record: TokenRecord, usage: KeyUsage | None) -> dict[str, Any]:
    info = record.info().model_dump(mode="json", exclude={"version", "revoked_at"})
    if info["budget"] is not None:
        info["budget"]["usd"] = float(record.budget.usd) if record.budget else None
    used = usage or KeyUsage()
    spend: dict[str, Any] = {
        "spent_usd": format(used.spent_usd, "f"),
        "month": used.month or None,
        "month_usd": format(used.month_usd, "f"),
        "total_tokens": used.total_tokens,
        "calls": used.calls,
        "unpriced_calls": used.unpriced_calls,
    }
    last = used.last_used_at.isoformat() if used.last_used_at is not None else None
    return {"object": "api_key", **info, "last_used_at": last, "usage": spend}


def _find(gw: Gateway, collection: str, key_id: str) -> list[tuple[str, TokenRecord]]:
    found = [
        (h, r)
        for h, r in gw.tokens.by_id(key_id)
        if r.collection == collection and r.trajectory_id is None and not r.revoked
    ]
    if not found:
        raise NotFound(f"No key '{key_id}' in this collection.", code="key_not_found")
    return found


def _current(found: list[tuple[str, TokenRecord]]) -> TokenRecord:
    live = [r for _, r in found if not r.superseded]
    return live[0] if live else found[0][1]


async def _publish(gw: Gateway, info: KeyInfo, event: BaseModel) -> None:
    await gw.publisher.publish(info.collection, info.id, event)


async def create_key(request: web.Request) -> web.Response:
    require_scope(request, "admin")
    gw = request.app[GATEWAY]
    collection = auth_of(request).collection
    fields = await _body(request, KeyFields)
    policy = _changes(fields)
    policy.setdefault("scopes", DEFAULT_SCOPES)
    name = policy.pop("name", "")
    secret = generate_token()
    record = await gw.tokens.register(secret, collection, name, **policy)
    await _publish(gw, record.info(), KeyCreated(key=record.info()))
    body = key_object(record, None) | {"key": secret}
    return web.json_response(body, status=201, dumps=_dumps)


async def list_keys(request: web.Request) -> web.Response:
    require_scope(request, "admin")
    gw = request.app[GATEWAY]
    records = sorted(
        gw.tokens.in_collection(auth_of(request).collection), key=lambda r: (r.created_at, r.id)
    )
    data = [key_object(r, gw.key_usage.usage(r.id)) for r in records]
    return web.json_response({"object": "list", "data": data}, dumps=_dumps)


async def get_key(request: web.Request) -> web.Response:
    require_scope(request, "admin")
    gw = request.app[GATEWAY]
    record = _current(_find(gw, auth_of(request).collection, request.match_info["key_id"]))
    return web.json_response(key_object(record, gw.key_usage.usage(record.id)), dumps=_dumps)


async def update_key(request: web.Request) -> web.Response:
    require_scope(request, "admin")
    gw = request.app[GATEWAY]
    found = _find(gw, auth_of(request).collection, request.match_info["key_id"])
    changes = _changes(await _body(request, KeyFields))
    version = max(r.version for _, r in found) + 1
    current = _current(found)
    for token_hash, record in found:
        update = dict(changes, version=version)
        if record.superseded:
            update.pop("expires_at", None)  # the old secret keeps its grace deadline
        await gw.tokens.put(token_hash, record.model_copy(update=update))
    current = current.model_copy(update=dict(changes, version=version))
    await _publish(gw, current.info(), KeyUpdated(key=current.info()))
    return web.json_response(key_object(current, gw.key_usage.usage(current.id)), dumps=_dumps)


async def rotate_key(request: web.Request) -> web.Response:
    require_scope(request, "admin")
    gw = request.app[GATEWAY]
    found = _find(gw, auth_of(request).collection, request.match_info["key_id"])
    body: RotateBody = await _body(request, RotateBody)
    now = datetime.now(UTC)
    until = now + timedelta(seconds=body.grace_seconds)
    version = max(r.version for _, r in found) + 1
    current = _current(found)
    for token_hash, record in found:
        if body.grace_seconds == 0:
            await gw.tokens.revoke(token_hash)
            continue
        deadline = until if record.expires_at is None else min(until, record.expires_at)
        old = record.model_copy(
            update={"superseded": True, "expires_at": deadline, "version": version}
        )
        await gw.tokens.put(token_hash, old)
    secret = generate_token()
    fresh = current.model_copy(update={"version": version, "created_at": current.created_at})
    await gw.tokens.put(hash_token(secret), fresh)
    await _publish(gw, fresh.info(), KeyRotated(key=fresh.info(), previous_valid_until=until))
    body_out = key_object(fresh, gw.key_usage.usage(fresh.id)) | {
        "key": secret,
        "previous_valid_until": until.isoformat(),
    }
    return web.json_response(body_out, dumps=_dumps)


async def revoke_key(request: web.Request) -> web.Response:
    require_scope(request, "admin")
    gw = request.app[GATEWAY]
    found = _find(gw, auth_of(request).collection, request.match_info["key_id"])
    current = _current(found)
    for token_hash, _record in found:
        await gw.tokens.revoke(token_hash)
    now = datetime.now(UTC)
    version = max(r.version for _, r in found) + 1
    info = current.info().model_copy(update={"revoked_at": now, "version": version})
    await _publish(gw, info, KeyRevoked(key=info))
    return web.json_response({"id": current.id, "object": "api_key", "deleted": True})


async def collection_spend(request: web.Request) -> web.Response:
    """``GET /api/v1/keys/spend``: the collection's spend, in total and per key."""
    require_scope(request, "admin")
    gw = request.app[GATEWAY]
    records = gw.tokens.in_collection(auth_of(request).collection)
    total = sum(
        (u.spent_usd for r in records if (u := gw.key_usage.usage(r.id))), KeyUsage().spent_usd
    )
    per_key = [
        {"id": r.id, "name": r.name, **key_object(r, gw.key_usage.usage(r.id))["usage"]}
        for r in sorted(records, key=lambda r: r.id)
    ]
    return web.json_response(
        {
            "object": "spend",
            "collection": auth_of(request).collection,
            "spent_usd": format(total, "f"),
            "keys": per_key,
        },
        dumps=_dumps,
    )


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def routes() -> list[web.RouteDef]:
    return [
        web.post("/api/v1/keys", create_key),
        web.get("/api/v1/keys", list_keys),
        web.get("/api/v1/keys/spend", collection_spend),
        web.get("/api/v1/keys/{key_id}", get_key),
        web.patch("/api/v1/keys/{key_id}", update_key),
        web.post("/api/v1/keys/{key_id}/rotate", rotate_key),
        web.delete("/api/v1/keys/{key_id}", revoke_key),
    ]
