"""``POST /v1/embeddings``: validate OpenAI's embeddings request, hand it to a proxy
as an ``embedding`` call (same subject, same frames as chat; see
:mod:`shared.chatwire`) and return its one JSON answer. Keys, scopes, allowed
models and rate limits apply as on chat (the auth middleware and
:func:`services.gateway.policy.check_model`)."""

from __future__ import annotations

import time

from aiohttp import web

from services.gateway.calls import open_model_call, read_body
from services.gateway.middleware import TRAJECTORY_HEADER
from services.gateway.state import GATEWAY, auth_of
from shared.errors import ApiError
from shared.openai_embeddings import parse_embedding_request

INGRESS = "embeddings"


async def embeddings(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    received_at = time.time()
    auth = auth_of(request)
    body = await read_body(request, gw.settings.max_body_bytes)
    req = parse_embedding_request(body)
    jetty = req.jetty
    if jetty is not None and jetty.collection is not None and jetty.collection != auth.collection:
        raise ApiError(
            f"This API token cannot write to collection '{jetty.collection}'.",
            param="jetty.collection",
            code="collection_forbidden",
            status=403,
            error_type="permission_error",
        )
    call = await open_model_call(
        gw,
        auth,
        req.model,
        req.task,
        body,
        received_at=received_at,
        ingress=INGRESS,
        keep=not (jetty is not None and jetty.store is False),
        kind="embedding",
    )
    payload = await call.response_json()
    return web.Response(
        body=payload,
        content_type="application/json",
        headers={TRAJECTORY_HEADER: call.trajectory_id},
    )


def routes() -> list[web.RouteDef]:
    return [
        web.post("/v1/embeddings", embeddings),
        web.post("/embeddings", embeddings),
    ]
