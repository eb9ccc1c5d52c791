"""The gateway's aiohttp application: routes and the lifecycle of its clients."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from services.gateway import (
    admin,
    chat,
    console,
    deletion,
    embeddings,
    export,
    files,
    ingress,
    observe,
    policy,
    runbook_follow,
    runbook_routes,
    trajectories,
)
from services.gateway.files_api import routes as files_api
from services.gateway.middleware import auth_middleware, errors_middleware
from services.gateway.openapi import reference as openapi_reference
from services.gateway.ratelimit import RateLimiter
from services.gateway.relay import ProxyRelay
from services.gateway.routines import routes as routines_api
from services.gateway.routines import scheduler as routines_scheduler
from services.gateway.secrets_api import routes as secrets_api
from services.gateway.settings import GatewaySettings
from services.gateway.state import GATEWAY, Gateway
from services.gateway.trajectory_ops import db_routes, download, labels
from services.gateway.webhooks import routes as webhook_routes
from shared.bus import ClaimStore, EventPublisher, connect_until_up, ensure_streams, source_name
from shared.key_usage import KeyUsageStore
from shared.keys import legacy_key_id
from shared.metrics import metrics_route
from shared.runs import RunStates
from shared.tokens import TokenStore, hash_token

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", GatewaySettings)


async def _connect_forever(settings: GatewaySettings) -> Gateway:
    nc = await connect_until_up(settings.nats_url, source_name("gateway"))
    js = nc.jetstream()
    await ensure_streams(js, settings.stream_replicas, settings.retention_days)
    tokens = TokenStore(js)
    if settings.bootstrap_token:
        await tokens.register(
            settings.bootstrap_token,
            settings.bootstrap_collection,
            "bootstrap",
            id=legacy_key_id(hash_token(settings.bootstrap_token)),
            scopes=("api", "admin"),
        )
    await tokens.watch()
    key_usage = KeyUsageStore(js)
    await key_usage.watch()
    limiter = RateLimiter(js, source_name("gateway").partition("/")[2])
    await limiter.start()
    relay = ProxyRelay(nc, settings.proxy_idle_timeout)
    await relay.start()
    return Gateway(
        settings=settings,
        nc=nc,
        js=js,
        relay=relay,
        tokens=tokens,
        claims=ClaimStore(js),
        runs=RunStates(js),
        publisher=EventPublisher(nc, js, source_name("gateway"), settings.claim_threshold_bytes),
        key_usage=key_usage,
        limiter=limiter,
    )


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    gw = await _connect_forever(app[SETTINGS])
    app[GATEWAY] = gw
    # The bucket is made at start (in the background: chat is served while the
    # object store is down); the first upload or artifact never finds it missing.
    store_ready = asyncio.create_task(files.prepare_object_store(gw))
    yield
    store_ready.cancel()
    await gw.relay.stop()
    await gw.publisher.flush(timeout=5)
    await gw.tokens.close()
    await gw.key_usage.close()
    await gw.limiter.close()
    if gw.background:
        await asyncio.wait(gw.background, timeout=2)
    if gw.pool is not None:
        await gw.pool.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(gw.nc.drain(), timeout=5)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    ready = gw.nc.is_connected
    return web.json_response(
        {"status": "ready" if ready else "unavailable", "nats": gw.nc.is_connected},
        status=200 if ready else 503,
    )


def create_app(settings: GatewaySettings) -> web.Application:
    # The body limit is enforced by chat.read_body with an OpenAI-shaped 413;
    # aiohttp's own limit only backs it up.
    app = web.Application(
        middlewares=[
            observe.observe_middleware,
            errors_middleware,
            console.console_middleware,
            auth_middleware,
        ],
        client_max_size=settings.max_body_bytes + 1024,
    )
    app[SETTINGS] = settings
    app[observe.ENABLED] = settings.metrics_enabled
    app.cleanup_ctx.append(_lifecycle)
    app.cleanup_ctx.append(routines_scheduler.lifecycle)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_routes([metrics_route()])
    app.router.add_post("/v1/chat/completions", chat.chat_completions)
    app.router.add_post("/chat/completions", chat.chat_completions)
    app.router.add_get("/v1/models", chat.list_models)
    app.router.add_routes(embeddings.routes())
    for module in ingress.MODULES:
        app.router.add_routes(module.routes())
    app.router.add_routes(files.routes())
    app.router.add_routes(files_api.routes())
    app.router.add_routes(download.routes())
    app.router.add_routes(labels.routes())
    app.router.add_routes(db_routes.routes())
    app.router.add_routes(secrets_api.routes())
    app.router.add_routes(routines_api.routes())
    app.router.add_routes(runbook_routes.routes())
    app.router.add_routes(runbook_follow.routes())
    app.router.add_routes(openapi_reference.routes())
    app.router.add_routes(webhook_routes.routes())
    app.router.add_routes(admin.routes())
    app.on_response_prepare.append(policy.add_rate_headers)
    app.router.add_get("/api/v1/trajectories", trajectories.list_trajectories)
    app.router.add_get("/api/v1/trajectories/{trajectory_id}", trajectories.get_trajectory)
    app.router.add_delete("/api/v1/trajectories/{trajectory_id}", deletion.delete_trajectory)
    app.router.add_get("/api/v1/export/trajectories", export.export_trajectories)
    console.setup(app)  # the web console under /ui/ (services/gateway/console)
    return app
