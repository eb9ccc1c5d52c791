"""``POST /v1/chat/completions`` in passthrough mode: validate, hand the call to a
proxy over NATS, and relay its reply (JSON or SSE) to the client."""

from __future__ import annotations

import time

import orjson
from aiohttp import web

from services.gateway.calls import open_call, read_body
from services.gateway.middleware import TRAJECTORY_HEADER
from services.gateway.runbooks import run_runbook
from services.gateway.sse import SSE, relay_stream
from services.gateway.state import GATEWAY, auth_of
from shared import subjects
from shared.errors import ApiError
from shared.keys import model_allowed
from shared.openai_chat import ChatHead, check_chat_request, parse_chat_request


def _check_jetty_block(req: ChatHead, collection: str) -> None:
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
    req = check_chat_request(body)
    if req.jetty is not None and req.jetty.runbook:
        return await run_runbook(request, gw, auth, parse_chat_request(body))
    _check_jetty_block(req, auth.collection)
    call = await open_call(gw, auth, req, body, received_at=received_at)
    headers = {TRAJECTORY_HEADER: call.trajectory_id}
    if not call.call.stream:
        payload = await call.response_json()
        return web.Response(body=payload, content_type="application/json", headers=headers)
    return await relay_stream(request, call, ChatStream(), headers)


class ChatStream:
    """OpenAI's own format: each chunk as an SSE ``data:`` line, then ``[DONE]``."""

    content_type = SSE

    def chunk(self, payload: bytes) -> bytes:
        return b"data: " + payload + b"\n\n"

    def done(self) -> bytes:
        return b"data: [DONE]\n\n"

    def failed(self, exc: ApiError) -> bytes:
        return b"data: " + exc.to_json() + b"\n\n" + b"data: [DONE]\n\n"


async def list_models(request: web.Request) -> web.Response:
    data = await request.app[GATEWAY].relay.request_json(subjects.MODELS_LIST)
    allowed = auth_of(request).allowed_models
    if allowed is not None:
        # A key with an allow-list sees the models it may use.
        listing = orjson.loads(data)
        listing["data"] = [m for m in listing.get("data", []) if model_allowed(allowed, m["id"])]
        data = orjson.dumps(listing)
    return web.Response(body=data, content_type="application/json")
