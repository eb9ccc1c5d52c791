"""The one streaming relay of every ingress format: the proxy's OpenAI frames in,
the format's stream out.

:func:`relay_stream` owns what the four formats (OpenAI chat, Anthropic Messages,
OpenAI Responses, Gemini) share: the headers go out with the first bytes, so an
error before them still gets its real HTTP status (and the SDK its exception
class); a client that goes away cancels the upstream call; an error after the
first bytes becomes the format's own error event; a client that hangs up once it
has the final event is the normal end. A format supplies only its translation
(:class:`StreamFormat`).

Keep-alive frames never reach here (:class:`~services.gateway.relay.ProxyRelay`
absorbs them). The proxy sends the ``d`` frame only after the call's final event
is acknowledged by JetStream, so the client's last byte always follows it.
"""

from __future__ import annotations

import logging
from typing import Protocol

from aiohttp import web

from services.gateway.calls import OpenCall
from shared.chatwire import Frame
from shared.errors import ApiError

log = logging.getLogger(__name__)

SSE = "text/event-stream; charset=utf-8"


class StreamFormat(Protocol):
    """One wire format's side of a stream. Each method returns the bytes to send
    (empty: nothing yet)."""

    @property
    def content_type(self) -> str: ...

    def chunk(self, payload: bytes) -> bytes:
        """One ``chat.completion.chunk`` (its JSON, as the proxy sent it)."""
        ...

    def done(self) -> bytes:
        """The end of the stream; may raise :class:`ApiError` (e.g. 502 when nothing
        came), which reaches the client as its HTTP status if nothing was sent."""
        ...

    def failed(self, exc: ApiError) -> bytes:
        """An error after the first bytes went out; the stream ends after these."""
        ...


def _headers(content_type: str, extra: dict[str, str]) -> dict[str, str]:
    return {
        "Content-Type": content_type,
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
        **extra,
    }


async def relay_stream(
    request: web.Request, call: OpenCall, fmt: StreamFormat, headers: dict[str, str]
) -> web.StreamResponse:
    """Stream ``call`` to the client in ``fmt``; ``headers`` go on the response."""
    response: web.StreamResponse | None = None
    try:
        async for kind, payload in call.frames():
            if kind is Frame.CHUNK:
                data = fmt.chunk(payload)
                if not data:
                    continue
                if response is None:
                    response = web.StreamResponse(headers=_headers(fmt.content_type, headers))
                    await response.prepare(request)
                try:
                    await response.write(data)
                except ConnectionResetError:
                    call.cancel()  # the client left mid-stream: stop the upstream call
                    raise
            elif kind is Frame.DONE:
                data = fmt.done()
                if response is None:
                    response = web.StreamResponse(headers=_headers(fmt.content_type, headers))
                    await response.prepare(request)
                return await _finish(response, data)
    except ApiError as exc:
        if response is None:
            raise
        return await _finish(response, fmt.failed(exc))
    if response is not None:
        return await _finish(response, b"")
    raise ApiError("The proxy ended the stream without any data.", status=502)


async def _finish(response: web.StreamResponse, data: bytes) -> web.StreamResponse:
    # The call is over and recorded: a client that hangs up once it has the last
    # event (codex does, after response.completed) is the normal end.
    try:
        if data:
            await response.write(data)
        await response.write_eof()
    except ConnectionResetError as exc:
        log.debug("client closed after the last event: %r", exc)
    return response
