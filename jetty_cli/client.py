"""The HTTP side of the client commands (``upload``, ``run``, ``trajectories``):
where the deployment is, its token, and one small aiohttp client that turns every
failure into a :class:`CliError` — one line for the user, never a traceback.

Where to talk to, first found wins:

* ``--url`` / ``--token``;
* ``JETTY_URL`` / ``JETTY_API_TOKEN``;
* from a checkout, the embedded stack ``jetty up`` is running (its URL from
  ``run/stack.json``, the development token from ``run/dev-token``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from jetty_cli.home import Home

TIMEOUT = aiohttp.ClientTimeout(total=None, connect=10, sock_read=None)
_CHUNK = 256 * 1024


class CliError(Exception):
    """What went wrong, as the one line the command prints (exit code 1)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Target:
    url: str
    token: str
    #: NATS of the embedded stack, when the target is one (``events tail``)
    nats_url: str | None = None


def resolve_target(args: argparse.Namespace) -> Target:
    url = getattr(args, "url", None) or os.environ.get("JETTY_URL")
    token = getattr(args, "token", None) or os.environ.get("JETTY_API_TOKEN")
    nats_url = None
    if not url or not token:
        home = Home()
        stack = home.read_stack()
        if stack is not None:
            url = url or stack.base_url
            token = token or home.read_dev_token()
            nats_url = stack.nats_url
    if not url:
        raise CliError("no deployment: set JETTY_URL (or --url), or start one with `make up`")
    if not token:
        raise CliError("no token: set JETTY_API_TOKEN (or --token)")
    return Target(url.rstrip("/"), token, nats_url)


def _error_line(status: int, body: bytes) -> str:
    try:
        doc = orjson.loads(body)
        error = doc.get("error", doc) if isinstance(doc, dict) else {}
        message = error.get("message") if isinstance(error, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
    except orjson.JSONDecodeError:
        message, code = body.decode(errors="replace").strip()[:200] or None, None
    detail = f" ({code})" if code else ""
    return f"HTTP {status}{detail}: {message or 'no details'}"


class Api:
    """An open session against one deployment."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        self._session = aiohttp.ClientSession(
            timeout=TIMEOUT, headers={"Authorization": f"Bearer {self.target.token}"}
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use Api as an async context manager"
        return self._session

    def _unreachable(self, exc: BaseException) -> CliError:
        reason = str(exc) or exc.__class__.__name__
        return CliError(f"cannot reach {self.target.url}: {reason}")

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            async with self.session.request(method, self.target.url + path, **kwargs) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    raise CliError(_error_line(resp.status, body))
                return orjson.loads(body) if body else None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise self._unreachable(exc) from None
        except orjson.JSONDecodeError:
            raise CliError(f"{method} {path}: the answer is not JSON") from None

    async def upload(
        self, path: Path, collection: str | None, progress: Callable[[int], None]
    ) -> Any:
        """``POST /api/v1/files/upload``, reading the file in chunks (``progress``
        is told each chunk's size as it goes out)."""

        async def chunks() -> AsyncIterator[bytes]:
            with path.open("rb") as fh:
                while chunk := fh.read(_CHUNK):
                    progress(len(chunk))
                    yield chunk

        form = aiohttp.FormData()
        form.add_field(
            "file", chunks(), filename=path.name, content_type="application/octet-stream"
        )
        if collection:
            form.add_field("collection", collection)
        return await self.json("POST", "/api/v1/files/upload", data=form)

    async def sse(
        self, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> AsyncIterator[tuple[str | None, dict[str, Any] | None]]:
        """The events of an SSE answer as ``(id, data)``; ``data`` None is ``[DONE]``."""
        try:
            async with self.session.request(
                method, self.target.url + path, headers=headers, **kwargs
            ) as resp:
                if resp.status >= 400:
                    raise CliError(_error_line(resp.status, await resp.read()))
                event_id: str | None = None
                data: list[str] = []
                async for raw in resp.content:
                    line = raw.decode().rstrip("\r\n")
                    if line.startswith(":"):
                        continue
                    if line.startswith("id:"):
                        event_id = line[3:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].lstrip())
                    elif not line and data:
                        text = "\n".join(data)
                        data = []
                        yield event_id, None if text == "[DONE]" else orjson.loads(text)
                        event_id = None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise self._unreachable(exc) from None

    async def download(self, path: str, dest: Path) -> int:
        dest.parent.mkdir(parents=True, exist_ok=True)
        size = 0
        try:
            async with self.session.get(self.target.url + path) as resp:
                if resp.status >= 400:
                    raise CliError(_error_line(resp.status, await resp.read()))
                tmp = dest.with_name(dest.name + ".part")
                with tmp.open("wb") as fh:
                    async for chunk in resp.content.iter_chunked(_CHUNK):
                        fh.write(chunk)
                        size += len(chunk)
                tmp.replace(dest)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._unreachable(exc) from None
        return size
