"""`jetty up` end to end: it serves, restarts a crashed service, stops cleanly on
SIGTERM with every child gone, and a second start keeps the token and the data.
Also the stack fixture's own promises (kill and restart one service)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from jetty_cli import procs
from jetty_cli.home import Home
from jetty_cli.testing import (
    JettyUpProcess,
    StackFactory,
    TestStack,
    call,
    chat,
    hermetic_env,
    run_sync,
    traversable_tmpdir,
)

HTTP_TIMEOUT = 30.0


def wait_for(predicate: Any, what: str, timeout: float = 60.0) -> None:
    procs.wait_until(predicate, timeout=timeout, interval=0.1, describe=what)


@pytest.fixture
def jetty_home() -> Iterator[Path]:
    # Under the system temp dir, enterable by PostgreSQL's unprivileged user.
    home = traversable_tmpdir("jetty-test-home-")
    yield home
    shutil.rmtree(home)


def trajectory_ids(dsn: str) -> set[str]:
    async def fetch() -> set[str]:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            rows = await conn.fetch("SELECT trajectory_id FROM trajectories")
        finally:
            await conn.close()
        return {row[0] for row in rows}

    return run_sync(fetch)


def replay_into_new_database(live_dsn: str, home: Path) -> str:
    """Create an empty database beside the live one and `jetty replay` into it."""
    copy_dsn = live_dsn.rsplit("/", 1)[0] + "/replay_copy"

    async def create() -> None:
        conn = await asyncpg.connect(live_dsn, timeout=10)
        try:
            await conn.execute("CREATE DATABASE replay_copy")
        finally:
            await conn.close()

    run_sync(create)
    # Let the recorder catch up, so the live side has everything the stream has.
    wait_for(lambda: len(trajectory_ids(live_dsn)) >= 1, "the live projection")
    result = subprocess.run(
        JettyUpProcess.argv("replay", "--database-url", copy_dsn),
        env={**hermetic_env(), "JETTY_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return copy_dsn


def _postmaster_pid(home: Path) -> int:
    return int((home / "pg" / "data" / "postmaster.pid").read_text().split()[0])


def test_up_serves_recovers_stops_and_keeps_state(jetty_home: Path, tmp_path: Path) -> None:
    up = JettyUpProcess(jetty_home, tmp_path / "console1.txt").start()
    try:
        assert up.url == f"http://127.0.0.1:{up.port}"
        dev_token = jetty_home / "run" / "dev-token"
        assert dev_token.read_text().strip() == up.token
        assert stat.S_IMODE(dev_token.stat().st_mode) == 0o600

        status, headers, body = chat(up.url, up.token, "hello from the stack test")
        assert status == 200, body
        assert "hello from the stack test" in body["choices"][0]["message"]["content"]
        trajectory_id = headers["X-Jetty-Trajectory-Id"]
        assert body["jetty_metadata"]["trajectory_id"] == trajectory_id
        status, _, trajectory = call(f"{up.url}/api/v1/trajectories/{trajectory_id}", up.token)
        assert status == 200, trajectory

        # A second `jetty up` on the same state refuses to start.
        second = JettyUpProcess(jetty_home, tmp_path / "console-second.txt")
        with pytest.raises(RuntimeError, match="already running"):
            second.start(timeout=60)

        # A service that dies is restarted, and stack.json follows the new pid.
        info = Home(jetty_home).read_stack()
        assert info is not None
        old_recorder = info.services["recorder"]
        os.kill(old_recorder, signal.SIGKILL)

        def recorder_replaced() -> bool:
            now = Home(jetty_home).read_stack()
            return now is not None and now.services["recorder"] != old_recorder

        wait_for(recorder_replaced, "recorder restarted by jetty up")
        assert "recorder exited unexpectedly" in up.output()

        # `jetty replay` rebuilds the projection from the running stack's stream.
        info = Home(jetty_home).read_stack()
        assert info is not None
        copy_url = replay_into_new_database(info.database_url, jetty_home)
        assert trajectory_ids(copy_url) == trajectory_ids(info.database_url)
        assert trajectory_id in trajectory_ids(copy_url)

        children = {**info.services, "nats": info.nats_pid, "postgres": _postmaster_pid(jetty_home)}
        dead = {name: pid for name, pid in children.items() if not (pid and procs.pid_alive(pid))}
        assert not dead, up.output()
    finally:
        code = up.stop()
    assert code == 0, up.output()
    assert not [pid for pid in children.values() if pid and procs.pid_alive(pid)], up.output()
    assert not (jetty_home / "run" / "stack.json").exists()

    # Second life: same token, the trajectory is still there, new calls work.
    up = JettyUpProcess(jetty_home, tmp_path / "console2.txt").start()
    try:
        assert up.token == dev_token.read_text().strip()
        status, _, again = call(f"{up.url}/api/v1/trajectories/{trajectory_id}", up.token)
        assert status == 200, again
        assert again["trajectory_id"] == trajectory_id
        status, _, body = chat(up.url, up.token, "second life")
        assert status == 200, body
    finally:
        code = up.stop()
    assert code == 0, up.output()


def test_up_sigint_during_start_exits_cleanly(jetty_home: Path, tmp_path: Path) -> None:
    up = JettyUpProcess(jetty_home, tmp_path / "console.txt")
    up.proc = procs.spawn(JettyUpProcess.argv("up"), log_path=up.console_path, env=up.env)
    # Interrupt as soon as it has said anything: mid-way through starting.
    wait_for(lambda: "jetty" in up.output(), "jetty up to begin starting")
    up.signal(signal.SIGINT)
    assert up.wait() == 0, up.output()
    assert not (jetty_home / "run" / "stack.json").exists()
    data = jetty_home / "pg" / "data"
    if (data / "postmaster.pid").exists():  # only if Postgres got that far
        pytest.fail(f"PostgreSQL still running after interrupt:\n{up.output()}")


def test_up_reports_port_in_use(jetty_home: Path, tmp_path: Path, stack: TestStack) -> None:
    busy = int(stack.base_url.rsplit(":", 1)[1])
    up = JettyUpProcess(jetty_home, tmp_path / "console.txt", port=busy)
    with pytest.raises(RuntimeError, match="already in use"):
        up.start(timeout=60)
    assert up.proc is not None and up.proc.returncode == 1


async def achat(
    session: aiohttp.ClientSession, base_url: str, token: str, text: str
) -> tuple[int, Any]:
    async with session.post(
        base_url + "/v1/chat/completions",
        json={"model": "mock/echo", "messages": [{"role": "user", "content": text}]},
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        return response.status, await response.json()


async def test_stack_fixture_kill_and_restart(stack_factory: StackFactory) -> None:
    # Its own stack: a SIGKILLed recorder leaves unacknowledged deliveries behind
    # (redelivered after ack_wait), which the shared stack's other tests need not see.
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT)
    with stack_factory() as stack:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            status, body = await achat(session, stack.base_url, stack.token, "before")
            assert status == 200, body
            old_pid = stack["recorder"].pid
            assert stack.kill("recorder") == -signal.SIGKILL
            assert not stack["recorder"].alive
            # Recording waits in JetStream; the hot path does not notice.
            status, body = await achat(session, stack.base_url, stack.token, "recorder down")
            assert status == 200, body
            await stack.restart_async("recorder")
            assert stack["recorder"].alive and stack["recorder"].pid != old_pid
            url = f"{stack.base_url}/api/v1/trajectories/{body['jetty_metadata']['trajectory_id']}"
            headers = {"Authorization": f"Bearer {stack.token}"}
            for _ in range(600):
                async with session.get(url, headers=headers) as response:
                    if response.status == 200:
                        break
                await asyncio.sleep(0.1)
            assert response.status == 200


async def test_stack_create_token_for_another_collection(stack: TestStack) -> None:
    token = await stack.create_token("other-org", "test")
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        status, body = await achat(session, stack.base_url, token, "hi")
    assert status == 200, body
    assert body["jetty_metadata"]["collection"] == "other-org"
