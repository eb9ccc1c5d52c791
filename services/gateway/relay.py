"""Client side of the chat protocol (:mod:`shared.chatwire`): send a call to the
proxies over core NATS and receive its frames.

One wildcard inbox subscription per gateway process serves every call (no
SUB/UNSUB per request); frames are routed to the waiting call by the inbox's
last token.

Each call waits on its own :class:`_Inbox` (a list and at most one future), not an
``asyncio.Queue`` under ``wait_for``: on the hot path that saves a task, a queue
and a timer per frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Final

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared import subjects, tracing
from shared.chatwire import TERMINAL, BadFrame, ChatCall, Frame, encode_call, parse_frame
from shared.errors import ApiError, Unavailable, UpstreamError, UpstreamTimeout

log = logging.getLogger(__name__)

_NO_RESPONDERS: Final = b"\x00no-responders"


class _Inbox:
    """The frames of one call, in arrival order; one reader."""

    __slots__ = ("_frames", "_waiter")

    def __init__(self) -> None:
        self._frames: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, data: bytes) -> None:
        self._frames.append(data)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self, timeout: float) -> bytes:
        """The next frame; :class:`TimeoutError` after ``timeout`` seconds of silence."""
        if self._frames:
            return self._frames.popleft()
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        return self._frames.popleft()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class ProxyRelay:
    def __init__(self, nc: NATS, idle_timeout: float) -> None:
        self._nc = nc
        self._idle_timeout = idle_timeout
        self._prefix = nc.new_inbox()
        self._skip = len(self._prefix) + 1
        self._waiting: dict[str, _Inbox] = {}
        self._sub: Subscription | None = None
        self._counter = 0

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._prefix + ".*", cb=self._on_frame)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _on_frame(self, msg: Msg) -> None:
        inbox = self._waiting.get(msg.subject[self._skip :])
        if inbox is None:
            return  # the call already ended (late keep-alive or a cancelled call)
        if not msg.data and msg.headers and msg.headers.get("Status") == "503":
            inbox.put(_NO_RESPONDERS)
        else:
            inbox.put(msg.data)

    def _check_connected(self) -> None:
        if not self._nc.is_connected:
            raise Unavailable(
                "The event bus is unavailable; please retry shortly.", code="bus_unavailable"
            )

    async def call(
        self, call: ChatCall, body: bytes, trace: dict[str, str] | None = None
    ) -> AsyncIterator[tuple[Frame, bytes]]:
        """Yield the call's frames (keep-alives are absorbed) until a terminal one."""
        self._check_connected()
        self._counter += 1
        key = str(self._counter)
        inbox = self._waiting[key] = _Inbox()
        try:
            await self._nc.publish(
                subjects.CHAT_REQUEST,
                encode_call(call, body),
                reply=f"{self._prefix}.{key}",
                headers=trace or tracing.inject() or None,
            )
            while True:
                try:
                    data = await inbox.get(self._idle_timeout)
                except TimeoutError:
                    raise UpstreamTimeout(
                        "The model proxy stopped responding.", code="proxy_timeout"
                    ) from None
                if data == _NO_RESPONDERS:
                    raise Unavailable(
                        "No model proxy is available; please retry shortly.",
                        code="no_proxy_available",
                    )
                try:
                    kind, payload = parse_frame(data)
                except BadFrame as exc:
                    raise UpstreamError(f"Malformed reply from the proxy: {exc}") from None
                if kind is Frame.KEEPALIVE:
                    continue
                if kind is Frame.ERROR:
                    raise ApiError.from_dict(orjson.loads(payload))
                yield kind, payload
                if kind in TERMINAL:
                    return
        finally:
            self._waiting.pop(key, None)

    async def cancel(self, trajectory_id: str) -> None:
        if self._nc.is_connected:
            await self._nc.publish(subjects.CHAT_CANCEL, trajectory_id.encode())

    async def request_json(self, subject: str, timeout: float = 2.0) -> bytes:
        self._check_connected()
        try:
            msg = await self._nc.request(subject, b"", timeout=timeout)
        except Exception as exc:
            raise Unavailable(f"No model proxy answered: {exc.__class__.__name__}") from None
        return msg.data
