"""The runner's half of a ``local`` sandbox's only network path: a unix socket in
the run's directory (bound into the sandbox) whose every connection is forwarded
to the gateway's TCP host:port, bytes unchanged, both directions, half-closes
passed on.

The sandbox sees nothing but loopback; the relay inside it
(:mod:`services.runner.sandbox.inner_relay`) forwards ``127.0.0.1:<port>`` to this
socket, so the gateway is the one host the agent can reach.

At most ``max_connections`` are open at once: one past it is closed as soon as it
is accepted. A sandbox that floods its socket so spends its own connections, not
the runner's descriptors (each open connection costs the runner two), and the
other sandboxes' relays go on as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

CHUNK = 65536


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(CHUNK):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        pass  # a reset on either side ends this connection, nothing else


class GatewayRelay:
    """Serve ``path`` and forward each connection to ``host:port``."""

    def __init__(
        self,
        path: Path,
        host: str,
        port: int,
        *,
        connect_timeout: float = 10.0,
        max_connections: int = 64,
    ) -> None:
        self.path = path
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        #: connections closed at once for being past the bound
        self.refused = 0
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, *, owner: int | None = None) -> None:
        """Listen; ``owner`` (a uid) gets the socket when the sandbox runs as
        another host user than we do (connecting needs write permission on it)."""
        self._server = await asyncio.start_unix_server(self._accept, path=str(self.path))
        if owner is not None:
            os.chown(self.path, owner, owner)
        os.chmod(self.path, 0o600)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.max_connections:
            if self.refused % 1000 == 0:
                log.warning(
                    "relay %s: past %d connections; closing new ones (%d so far)",
                    self.path, self.max_connections, self.refused + 1,
                )  # fmt: skip
            self.refused += 1
            writer.transport.abort()
            return
        task = asyncio.create_task(self._forward(reader, writer))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.connect_timeout
            )
        except (OSError, TimeoutError) as exc:
            log.warning("relay: gateway %s:%s unreachable: %s", self.host, self.port, exc)
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for side in (up_writer, writer):
                side.close()
                with contextlib.suppress(OSError):
                    await side.wait_closed()

    async def stop(self) -> None:
        """Stop listening and cut the connections still open; idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
