"""``POST /v1/chat/completions`` in passthrough mode: validate, hand the call to a
proxy over NATS, and relay its reply (JSON or SSE) to the client."""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
from aiohttp import web

from services.gateway.middleware import TRAJECTORY_HEADER
from services.gateway.state import GATEWAY, Gateway, auth_of
from shared import subjects
from shared.chatwire import ChatCall, Frame
from shared.errors import ApiError, NotImplementedYet, PayloadTooLarge
from shared.ids import new_trajectory_id
from shared.openai_chat import ChatCompletionRequest, parse_chat_request

log = logging.getLogger(__name__)

_SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


async def read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(
            f"Request body of {request.content_length} bytes exceeds the limit of {limit} bytes.",
            code="request_too_large",
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(256 * 1024):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(
                f"Request body exceeds the limit of {limit} bytes.", code="request_too_large"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _check_jetty_block(req: ChatCompletionRequest, collection: str) -> None:
    if req.jetty is None:
        return
    if req.jetty.runbook:
        raise NotImplementedYet(
            "Runbook mode (jetty.runbook: true) is not available on this server yet.",
            param="jetty.runbook",
            code="runbook_not_available",
        )
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
    _check_jetty_block(req, auth.collection)

    trajectory_id = new_trajectory_id()
    body_ref = None
    if len(body) > gw.settings.claim_threshold_bytes:
        body_ref = await gw.claims.put(f"call/{trajectory_id}", body)
        body = b""
    call = ChatCall(
        trajectory_id=trajectory_id,
        collection=auth.collection,
        task=req.task,
        received_at=received_at,
        stream=bool(req.stream),
        include_usage=req.include_usage,
        body_ref=body_ref,
    )
    headers = {TRAJECTORY_HEADER: trajectory_id}
    try:
        if call.stream:
            return await _relay_stream(request, gw, call, body, headers)
        return await _relay_json(gw, call, body, headers)
    except asyncio.CancelledError:
        # The client went away: stop the upstream call; the proxy records the
        # cancellation with whatever was produced.
        cancel = asyncio.ensure_future(gw.relay.cancel(trajectory_id))
        gw.background.add(cancel)
        cancel.add_done_callback(gw.background.discard)
        raise
    except ApiError as exc:
        exc.trajectory_id = trajectory_id
        raise


async def _relay_json(
    gw: Gateway, call: ChatCall, body: bytes, headers: dict[str, str]
) -> web.Response:
    async for kind, payload in gw.relay.call(call, body):
        if kind is Frame.RESPONSE:
            return web.Response(body=payload, content_type="application/json", headers=headers)
    raise ApiError("The proxy ended the call without a response.", status=502)


async def _relay_stream(
    request: web.Request, gw: Gateway, call: ChatCall, body: bytes, headers: dict[str, str]
) -> web.StreamResponse:
    response: web.StreamResponse | None = None
    try:
        async for kind, payload in gw.relay.call(call, body):
            if response is None:
                # Headers go out with the first chunk, so an upstream error before
                # it still gets its real HTTP status.
                response = web.StreamResponse(status=200, headers={**_SSE_HEADERS, **headers})
                await response.prepare(request)
            if kind is Frame.CHUNK:
                await response.write(b"data: " + payload + b"\n\n")
            elif kind is Frame.DONE:
                await response.write(b"data: [DONE]\n\n")
    except ApiError as exc:
        if response is None:
            raise
        await response.write(b"data: " + exc.to_json() + b"\n\n" + b"data: [DONE]\n\n")
    except ConnectionResetError:
        # A write found the client gone (before aiohttp noticed and cancelled us).
        await gw.relay.cancel(call.trajectory_id)
        raise
    if response is None:
        raise ApiError("The proxy ended the stream without any data.", status=502)
    await response.write_eof()
    return response


async def list_models(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    data = await gw.relay.request_json(subjects.MODELS_LIST)
    orjson.loads(data)  # a proxy must answer JSON; fail loudly here if not
    return web.Response(body=data, content_type="application/json")
