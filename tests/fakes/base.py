"""What every fake upstream shares: scripts per model (falling back to named
presets, then a default), the requests it received and the clients that hung up,
and its aiohttp server started on a free port.

``handler_cancellation`` is on: a client that goes away cancels the handler at
once, which is how tests see that an adapter really closed its upstream request.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from aiohttp import web

ScriptT = TypeVar("ScriptT")

RECORD_LIMIT = 1000


class FakeServer(Generic[ScriptT]):
    #: appended to ``http://host:port`` in :attr:`base_url` (``/v1`` where the
    #: client's base URL includes the version, as OpenAI's does)
    url_suffix = ""

    def __init__(
        self,
        api_key: str | None,
        *,
        presets: Mapping[str, ScriptT],
        default: Callable[[], ScriptT],
        record_limit: int = RECORD_LIMIT,
        client_max_size: int = 64 * 1024 * 1024,
    ) -> None:
        self.api_key = api_key
        self.scripts: dict[str, ScriptT] = {}
        self.responders: dict[str, Callable[[Any], ScriptT]] = {}
        self.requests: deque[Any] = deque(maxlen=record_limit)
        self.disconnects: list[tuple[str, float]] = []
        self.disconnected = asyncio.Event()
        self.app = web.Application(client_max_size=client_max_size)
        self.base_url = ""
        self._presets = presets
        self._default = default
        self._runner: web.AppRunner | None = None

    def script(self, model: str, script: ScriptT) -> None:
        self.scripts[model] = script

    def respond_with(self, model: str, responder: Callable[[Any], ScriptT]) -> None:
        """Answer ``model`` with a script computed from each request body (a parsed
        JSON document): a scripted conversation that reacts to what the client sent,
        e.g. an agent's tool results. Takes precedence over :meth:`script`."""
        self.responders[model] = responder

    def reset(self) -> None:
        self.scripts.clear()
        self.responders.clear()
        self.requests.clear()
        self.disconnects.clear()
        self.disconnected.clear()

    def _script_for(self, model: str, body: Any = None) -> ScriptT:
        responder = self.responders.get(model)
        if responder is not None:
            return responder(body)
        return self.scripts.get(model) or self._presets.get(model) or self._default()

    def _hung_up(self, model: str) -> None:
        self.disconnects.append((model, time.time()))
        self.disconnected.set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound = self._runner.addresses[0][1]
        self.base_url = f"http://{host}:{bound}{self.url_suffix}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
