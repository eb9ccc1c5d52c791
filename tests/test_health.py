"""The health port (shared/health.py): the module on its own, then the proxy,
recorder and runner processes serving it against real NATS and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from jetty_cli.embedded import EmbeddedNats, EmbeddedObjectStore
from jetty_cli.procs import free_port
from shared.health import start_health_server


async def _get(port: int, path: str) -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as resp,
    ):
        return resp.status, await resp.json()


async def test_ready_follows_its_checks_and_extra_routes_share_the_port() -> None:
    state = {"nats": False}

    async def slow() -> bool:
        await asyncio.sleep(5)
        return True

    def broken() -> bool:
        raise RuntimeError("no")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text="jetty_up 1\n")

    server = await start_health_server(
        "127.0.0.1", 0, {"nats": lambda: state["nats"]}, routes=[web.get("/metrics", metrics)]
    )
    try:
        assert await _get(server.port, "/healthz") == (200, {"status": "ok"})
        assert await _get(server.port, "/readyz") == (
            503,
            {"status": "unavailable", "checks": {"nats": "failing"}},
        )
        state["nats"] = True
        assert await _get(server.port, "/readyz") == (
            200,
            {"status": "ok", "checks": {"nats": "ok"}},
        )
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{server.port}/metrics") as resp,
        ):
            assert resp.status == 200 and await resp.text() == "jetty_up 1\n"
    finally:
        await server.stop()

    server = await start_health_server(
        "127.0.0.1", 0, {"slow": slow, "broken": broken}, check_timeout=0.2
    )
    try:
        started = time.monotonic()
        status, body = await _get(server.port, "/readyz")
        assert status == 503
        assert body["checks"] == {"slow": "failing", "broken": "failing"}
        assert time.monotonic() - started < 3  # a hanging dependency never hangs the probe
    finally:
        await server.stop()


def _http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _wait_for(
    port: int, path: str, status: int, proc: subprocess.Popen[bytes]
) -> dict[str, object]:
    deadline = time.monotonic() + 30
    last: object = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"service exited with {proc.returncode}"
        try:
            code, text = _http_get(f"http://127.0.0.1:{port}{path}")
            last = (code, text)
            if code == status:
                body: dict[str, object] = json.loads(text)
                return body
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{path} never answered {status}; last: {last!r}")


@pytest.fixture
def service(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _start(
    procs: list[subprocess.Popen[bytes]], module: str, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    procs.append(proc)
    return proc


@pytest.mark.parametrize("module", ["services.proxy", "services.runner", "services.webhooks"])
def test_nats_services_are_ready_only_while_connected(
    module: str,
    nats_server: EmbeddedNats,
    service: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    port = free_port()
    env = {
        "JETTY_NATS_URL": nats_server.url,
        "JETTY_HEALTH_PORT": str(port),
        "JETTY_RUNNER_BACKEND": "local",
    }
    checks = {"nats": "ok"}
    store = None
    if module == "services.runner":
        # The runner also needs its bucket: ready only once the store answered.
        store = EmbeddedObjectStore(tmp_path / "store").start()
        env |= {
            "JETTY_S3_ENDPOINT": store.endpoint,
            "JETTY_S3_ACCESS_KEY": store.access_key,
            "JETTY_S3_SECRET_KEY": store.secret_key,
        }
        checks["store"] = "ok"
    try:
        _nats_readiness(module, env, checks, nats_server, service, tmp_path, port)
    finally:
        if store is not None:
            store.stop()


def _nats_readiness(
    module: str,
    env: dict[str, str],
    checks: dict[str, str],
    nats_server: EmbeddedNats,
    service: list[subprocess.Popen[bytes]],
    tmp_path: Path,
    port: int,
) -> None:
    proc = _start(service, module, env, tmp_path / "service.log")
    assert _wait_for(port, "/readyz", 200, proc) == {"status": "ok", "checks": checks}
    assert _wait_for(port, "/healthz", 200, proc) == {"status": "ok"}
    nats_server.stop()
    try:
        body = _wait_for(port, "/readyz", 503, proc)
        assert body["checks"] == {**checks, "nats": "failing"}
        assert _wait_for(port, "/healthz", 200, proc) == {"status": "ok"}  # alive, reconnecting
    finally:
        nats_server.start()
    _wait_for(port, "/readyz", 200, proc)


def test_recorder_is_alive_but_not_ready_until_postgres_and_nats_answer(
    nats_server: EmbeddedNats,
    migrated_database_url: str,
    service: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    port = free_port()
    dead_db = f"postgresql://jetty@127.0.0.1:{free_port()}/jetty"
    env = {"JETTY_NATS_URL": nats_server.url, "JETTY_HEALTH_PORT": str(port)}
    proc = _start(
        service, "services.recorder", {**env, "JETTY_DATABASE_URL": dead_db}, tmp_path / "a.log"
    )
    assert _wait_for(port, "/healthz", 200, proc) == {"status": "ok"}
    body = _wait_for(port, "/readyz", 503, proc)
    assert body["checks"] == {"postgresql": "failing", "nats": "failing"}
    proc.terminate()
    assert proc.wait(15) == 0

    port = free_port()
    env["JETTY_HEALTH_PORT"] = str(port)
    proc = _start(
        service,
        "services.recorder",
        {**env, "JETTY_DATABASE_URL": migrated_database_url},
        tmp_path / "b.log",
    )
    assert _wait_for(port, "/readyz", 200, proc) == {
        "status": "ok",
        "checks": {"postgresql": "ok", "nats": "ok"},
    }


def test_webhooks_is_alive_but_not_ready_until_nats_answers(
    service: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    port = free_port()
    env = {
        "JETTY_NATS_URL": f"nats://127.0.0.1:{free_port()}",
        "JETTY_HEALTH_PORT": str(port),
    }
    proc = _start(service, "services.webhooks", env, tmp_path / "webhooks.log")
    assert _wait_for(port, "/healthz", 200, proc) == {"status": "ok"}
    body = _wait_for(port, "/readyz", 503, proc)
    assert body["checks"] == {"nats": "failing"}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        assert b"# TYPE" in response.read()
    proc.terminate()  # SIGTERM while NATS is awaited: ends at once, cleanly
    assert proc.wait(15) == 0
