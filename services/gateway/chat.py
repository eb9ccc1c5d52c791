"""``POST /v1/chat/completions`` in passthrough mode: validate, hand the call to a
proxy over NATS, and relay its reply (JSON or SSE) to the client."""

from __future__ import annotations

import time

import orjson
from aiohttp import web

from services.gateway.calls import SSE_HEADERS, OpenCall, open_call, read_body
from services.gateway.middleware import TRAJECTORY_HEADER
from services.gateway.runbooks import run_runbook
from services.gateway.state import GATEWAY, auth_of
from shared import subjects
from shared.chatwire import Frame
from shared.errors import ApiError
from shared.keys import model_allowed
from shared.openai_chat import ChatCompletionRequest, parse_chat_request


def _check_jetty_block(req: ChatCompletionRequest, collection: str) -> None:
    if req.jetty is None:
        return
    if req.jetty.collection is not None and req.jetty.collection != collection:
        raise ApiError(
            f"This API token cannot write to collection '{req.jetty.collection}'.",
            param="jetty.collection",
            code="collection_forbidden",
            status=403,
            error_type="permission_error",
        )


async def chat_completions(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    received_at = time.time()
    auth = auth_of(request)
    body = await read_body(request, gw.settings.max_body_bytes)
    req = parse_chat_request(body)
    if req.jetty is not None and req.jetty.runbook:
        return await run_runbook(request, gw, auth, req)
    _check_jetty_block(req, auth.collection)
    call = await open_call(gw, auth, req, body, received_at=received_at)
    headers = {TRAJECTORY_HEADER: call.trajectory_id}
    if not call.call.stream:
        payload = await call.response_json()
        return web.Response(body=payload, content_type="application/json", headers=headers)
    return await _relay_stream(request, call, headers)


async def _relay_stream(
    request: web.Request, call: OpenCall, headers: dict[str, str]
) -> web.StreamResponse:
    response: web.StreamResponse | None = None
    try:
        async for kind, payload in call.frames():
            if response is None:
                # Headers go out with the first chunk, so an upstream error before
                # it still gets its real HTTP status.
                response = web.StreamResponse(status=200, headers={**SSE_HEADERS, **headers})
                await response.prepare(request)
            if kind is Frame.CHUNK:
                await response.write(b"data: " + payload + b"\n\n")
            elif kind is Frame.DONE:
                await response.write(b"data: [DONE]\n\n")
    except ApiError as exc:
        if response is None:
            raise
        await response.write(b"data: " + exc.to_json() + b"\n\n" + b"data: [DONE]\n\n")
    if response is None:
        raise ApiError("The proxy ended the stream without any data.", status=502)
    await response.write_eof()
    return response


async def list_models(request: web.Request) -> web.Response:
    data = await request.app[GATEWAY].relay.request_json(subjects.MODELS_LIST)
    allowed = auth_of(request).allowed_models
    if allowed is not None:
        # A key with an allow-list sees the models it may use.
        listing = orjson.loads(data)
        listing["data"] = [m for m in listing.get("data", []) if model_allowed(allowed, m["id"])]
        data = orjson.dumps(listing)
    return web.Response(body=data, content_type="application/json")
