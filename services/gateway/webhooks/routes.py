"""``/api/v1/webhooks``: register a URL for a collection's events, list and
delete them, and list a webhook's delivery attempts.

Who may: a key of the collection with the ``admin`` scope (:func:`require_admin`).
"""

from __future__ import annotations

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from services.gateway.scopes import require_scope
from services.gateway.state import GATEWAY, auth_of
from shared.errors import InvalidRequest, NotFound
from shared.webhooks import (
    DeliveryList,
    StoredWebhook,
    WebhookCreate,
    WebhookError,
    WebhookList,
    WebhookStore,
    check_event_types,
    check_target,
    new_secret,
    new_webhook_id,
    now,
    parse_networks,
)

STORE = web.AppKey("webhook_store", WebhookStore)


def require_admin(request: web.Request) -> str:
    """The collection the caller administers (403 without the ``admin`` scope)."""
    require_scope(request, "admin")
    return auth_of(request).collection


def _store(request: web.Request) -> WebhookStore:
    store = request.app.get(STORE)
    if store is None:
        store = WebhookStore(request.app[GATEWAY].js)
        request.app[STORE] = store
    return store


def _json(model: BaseModel, status: int = 200) -> web.Response:
    body = model.model_dump_json().encode()
    return web.Response(body=body, status=status, content_type="application/json")


async def create_webhook(request: web.Request) -> web.Response:
    collection = require_admin(request)
    try:
        raw = orjson.loads(await request.read())
        spec = WebhookCreate.model_validate(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("The body must be JSON.", code="invalid_json") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise InvalidRequest(first["msg"], param=param, code="invalid_value") from None
    settings = request.app[GATEWAY].settings
    try:
        types = check_event_types(spec.event_types)
        await check_target(spec.url, parse_networks(settings.webhook_allow_networks))
    except WebhookError as exc:
        raise InvalidRequest(str(exc), param=exc.param, code="invalid_webhook") from None
    hook = StoredWebhook(
        id=new_webhook_id(),
        collection=collection,
        url=spec.url,
        event_types=types,
        description=spec.description,
        created_at=now(),
        secret=new_secret(),
    )
    await _store(request).put(hook)
    return _json(hook.public(with_secret=True), status=201)


async def list_webhooks(request: web.Request) -> web.Response:
    collection = require_admin(request)
    hooks = await _store(request).of_collection(collection)
    return _json(WebhookList(data=[h.public() for h in hooks]))


async def _hook(request: web.Request) -> StoredWebhook:
    collection = require_admin(request)
    webhook_id = request.match_info["webhook_id"]
    hook = await _store(request).get(collection, webhook_id)
    if hook is None:
        raise NotFound(f"No webhook '{webhook_id}'.", param="webhook_id", code="not_found")
    return hook


async def get_webhook(request: web.Request) -> web.Response:
    return _json((await _hook(request)).public())


async def delete_webhook(request: web.Request) -> web.Response:
    hook = await _hook(request)
    await _store(request).delete(hook.collection, hook.id)
    return web.json_response({"id": hook.id, "deleted": True})


async def list_deliveries(request: web.Request) -> web.Response:
    hook = await _hook(request)
    return _json(DeliveryList(data=await _store(request).deliveries(hook.id)))


def routes() -> list[web.RouteDef]:
    return [
        web.post("/api/v1/webhooks", create_webhook),
        web.get("/api/v1/webhooks", list_webhooks),
        web.get("/api/v1/webhooks/{webhook_id}", get_webhook),
        web.delete("/api/v1/webhooks/{webhook_id}", delete_webhook),
        web.get("/api/v1/webhooks/{webhook_id}/deliveries", list_deliveries),
    ]
