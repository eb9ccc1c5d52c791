"""The HTTP plumbing every provider adapter shares: one pooled session per adapter and
one way of sending a request and mapping transport failures.

What stays in each adapter: the URL (fixed or per call), the headers, the body, and how
an HTTP error body becomes an :class:`~shared.errors.ApiError` (``on_error``).

Errors raised by :meth:`UpstreamHttp.post`, besides whatever ``on_error`` returns::

    UpstreamTimeout  code upstream_connect_timeout  TCP/TLS took longer than ``connect``
    UpstreamTimeout  code upstream_timeout          no response headers within ``first_byte``
    UpstreamError    code upstream_unreachable      any other aiohttp.ClientError
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from services.proxy.providers.sse import SSEDecoder, SSEEvent
from shared import tracing
from shared.errors import ApiError, UpstreamError, UpstreamTimeout

#: (status, body, headers) of an upstream HTTP error → what our client should see
ErrorMapper = Callable[[int, bytes, Mapping[str, str]], ApiError]


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds. ``connect``: TCP + TLS to the upstream. ``first_byte``: from sending
    the request until the response headers (for streams, also until the first
    event). ``read``: the longest silence allowed between two reads of a stream."""

    connect: float = 10.0
    first_byte: float = 300.0
    read: float = 120.0


def env_proxy(url: str) -> str | None:
    """The operator's ``HTTPS_PROXY``/``HTTP_PROXY`` for ``url`` unless ``NO_PROXY``
    exempts it, as the providers' own SDKs do (server environment only)."""
    parts = urlsplit(url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


class UpstreamHttp:
    """A provider's session: opened by :meth:`start` (or the first :meth:`post`),
    closed by :meth:`aclose`. ``origin`` is any URL on the upstream's host; the
    proxy for it is resolved once, here."""

    def __init__(self, name: str, origin: str, timeouts: Timeouts, pool_size: int) -> None:
        self._name = name
        self._timeouts = timeouts
        self._pool_size = pool_size
        self._proxy = env_proxy(origin)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is not None:
            return
        # One pooled connector for every call: reusing warm TLS connections is most
        # of an HTTP proxy's latency budget. Pool waits are bounded by first_byte.
        connector = aiohttp.TCPConnector(limit=self._pool_size, limit_per_host=0, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeouts.connect),
            # Not trust_env: aiohttp then re-reads the environment and ~/.netrc on every
            # request (measured at ~40% of the proxy's CPU). The proxy is resolved once.
            trust_env=False,
            auto_decompress=True,
            # Upstream cookies are never kept: a jar would replay one client's
            # cookies on another's calls, and filtering it costs every request.
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], on_error: ErrorMapper
    ) -> aiohttp.ClientResponse:
        """The open response (status < 400); the caller reads and releases it. An
        error status is read, released and raised as ``on_error`` maps it."""
        if self._session is None:
            await self.start()
        assert self._session is not None
        timeouts = self._timeouts
        trace_headers = tracing.inject()
        if trace_headers:
            headers = {**headers, **trace_headers}
        try:
            async with asyncio.timeout(timeouts.first_byte):
                response = await self._session.post(
                    url, data=body, headers=headers, proxy=self._proxy
                )
                if response.status >= 400:
                    try:
                        error_body = await response.read()
                    finally:
                        response.release()
                    raise on_error(response.status, error_body, response.headers)
                return response
        except aiohttp.ConnectionTimeoutError:
            raise UpstreamTimeout(
                f"Timed out connecting to the upstream provider '{self._name}' "
                f"(after {timeouts.connect:g}s).",
                code="upstream_connect_timeout",
            ) from None
        except TimeoutError:
            raise UpstreamTimeout(
                f"The upstream provider '{self._name}' did not answer within "
                f"{timeouts.first_byte:g}s.",
                code="upstream_timeout",
            ) from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                f"Could not reach the upstream provider '{self._name}' ({exc.__class__.__name__}).",
                code="upstream_unreachable",
            ) from None


def interrupted(provider: str, exc: Exception | None = None) -> UpstreamError:
    """A stream that ended (or broke) before the upstream said it was complete."""
    why = f" ({exc.__class__.__name__})" if exc is not None else ""
    return UpstreamError(
        f"The upstream provider '{provider}' closed the stream before it was complete{why}.",
        code="upstream_stream_interrupted",
    )


class UpstreamStream:
    """Reads an upstream's server-sent events with the stream timeouts (``first_byte``
    until the first bytes, then ``read`` between reads) and owns the connection: it
    is released for reuse only if the adapter calls :meth:`complete`, otherwise
    closed, so a cancelled, failed or abandoned stream stops the upstream generating
    (and billing) at once.

    Errors from :meth:`events`: ``UpstreamTimeout`` (code ``upstream_timeout``) after
    too long a silence; ``UpstreamError`` (``upstream_stream_interrupted``) when the
    connection breaks."""

    def __init__(self, provider: str, response: aiohttp.ClientResponse, timeouts: Timeouts):
        self._provider = provider
        self._response = response
        self._timeouts = timeouts
        self._decoder = SSEDecoder()
        self._clean = False

    async def events(self) -> AsyncIterator[SSEEvent]:
        """Every event until the end of the body (a last partial event is flushed)."""
        wait = self._timeouts.first_byte
        while True:
            try:
                async with asyncio.timeout(wait):
                    piece = await self._response.content.readany()
            except TimeoutError:
                raise UpstreamTimeout(
                    f"The upstream provider '{self._provider}' went silent for {wait:g}s "
                    "in the middle of a stream.",
                    code="upstream_timeout",
                ) from None
            except aiohttp.ClientError as exc:
                raise interrupted(self._provider, exc) from None
            wait = self._timeouts.read
            for event in self._decoder.feed(piece) if piece else self._decoder.end():
                yield event
            if not piece:
                return

    @property
    def pending(self) -> bool:
        """Bytes of an unfinished event were left when the body ended."""
        return self._decoder.pending

    def complete(self) -> None:
        self._clean = True

    def close(self) -> None:
        if self._clean:
            self._response.release()
        else:
            self._response.close()
