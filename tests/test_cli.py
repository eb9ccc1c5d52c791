"""The `jetty` command line: tokens against a stopped and a running stack,
`JETTY_NATS_URL`, bad input, and the event schemas."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jetty_cli import procs
from jetty_cli.embedded import EmbeddedNats
from jetty_cli.testing import (
    JettyUpProcess,
    call,
    chat,
    hermetic_env,
    run_sync,
    traversable_tmpdir,
)
from shared.bus import connect
from shared.tokens import TokenRecord, TokenStore, hash_token

CLI_TIMEOUT = 120.0


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    procs.wait_until(predicate, timeout=timeout, interval=0.1, describe=what)


def jetty(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        JettyUpProcess.argv(*args),
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def fetch_record(nats_url: str, token: str) -> TokenRecord | None:
    async def fetch() -> TokenRecord | None:
        nc = await connect(nats_url, "test-cli", max_reconnect_attempts=0)
        try:
            return await TokenStore(nc.jetstream()).fetch(hash_token(token))
        finally:
            await nc.close()

    return run_sync(fetch)


@pytest.fixture
def jetty_home() -> Iterator[Path]:
    home = traversable_tmpdir("jetty-test-home-")
    yield home
    shutil.rmtree(home)


def test_tokens_create_with_stack_stopped_then_running(jetty_home: Path, tmp_path: Path) -> None:
    env = {**hermetic_env(), "JETTY_HOME": str(jetty_home)}

    # No stack: the command starts the embedded NATS on the same store for the write.
    # --admin: the key also manages the collection's secrets (below).
    created = jetty("tokens", "create", "--collection", "org-a", "--name", "ci", "--admin", env=env)
    assert created.returncode == 0, created.stderr
    offline_token = created.stdout.strip()
    assert offline_token.startswith("jt_")
    assert offline_token not in created.stderr
    assert not (jetty_home / "run" / "stack.json").exists()
    with EmbeddedNats(jetty_home / "nats", log_path=tmp_path / "nats.log") as nats:
        record = fetch_record(nats.url, offline_token)
    assert record is not None and record.collection == "org-a" and record.name == "ci"

    up = JettyUpProcess(jetty_home, tmp_path / "console.txt").start()
    try:
        status, _, body = chat(up.url, offline_token, "made while stopped")
        assert status == 200, body
        assert body["jetty_metadata"]["collection"] == "org-a"

        # Secrets work out of the box: `jetty up` made a key, private to its home.
        key_file = jetty_home / "secrets.key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        status, _, body = call_method(
            "PUT", f"{up.url}/api/v1/secrets/CLI_TEST", offline_token, {"value": "s3cret-value"}
        )
        assert status == 200, body

        # Running stack: the token lands in the stack's NATS and works at once.
        created = jetty("tokens", "create", "--collection", "org-b", env=env)
        assert created.returncode == 0, created.stderr
        live_token = created.stdout.strip()
        info = json.loads((jetty_home / "run" / "stack.json").read_text())
        record = fetch_record(info["nats_url"], live_token)
        assert record is not None and record.collection == "org-b"

        # `jetty tokens create` returns once the running gateway accepts the token.
        status, _, body = chat(up.url, live_token, "made while running")
        assert status == 200, body
        assert body["jetty_metadata"]["collection"] == "org-b"

        # Collections do not see each other's trajectories.
        other_id = body["jetty_metadata"]["trajectory_id"]
        status, _, _ = call(f"{up.url}/api/v1/trajectories/{other_id}", offline_token)
        assert status == 404

        revoked = jetty("tokens", "revoke", live_token, env=env)
        assert revoked.returncode == 0, revoked.stderr

        def refused() -> bool:
            return chat(up.url, live_token, "after revoke")[0] == 401

        wait_for(refused, "the gateway to drop the revoked token")
    finally:
        code = up.stop()
    assert code == 0, up.output()


def test_tokens_create_uses_jetty_nats_url(nats_url: str, tmp_path: Path) -> None:
    env = {**hermetic_env(), "JETTY_HOME": str(tmp_path / "unused"), "JETTY_NATS_URL": nats_url}
    created = jetty("tokens", "create", "--collection", "via-env", env=env)
    assert created.returncode == 0, created.stderr
    record = fetch_record(nats_url, created.stdout.strip())
    assert record is not None and record.collection == "via-env"
    # Nothing was started or written under JETTY_HOME.
    assert not (tmp_path / "unused" / "nats").exists()


@pytest.mark.parametrize("collection", ["has space", "dots.not.allowed", "-leading", "x" * 65])
def test_tokens_create_rejects_bad_collection(collection: str, tmp_path: Path) -> None:
    env = {**hermetic_env(), "JETTY_HOME": str(tmp_path)}
    result = jetty("tokens", "create", f"--collection={collection}", env=env)
    assert result.returncode == 2
    assert "invalid collection" in result.stderr
    assert result.stdout == ""


def test_tokens_revoke_unknown(nats_url: str, tmp_path: Path) -> None:
    env = {**hermetic_env(), "JETTY_HOME": str(tmp_path), "JETTY_NATS_URL": nats_url}
    result = jetty("tokens", "revoke", "jt_not-a-real-token", env=env)
    assert result.returncode == 1
    assert "no such token" in result.stderr


def test_schemas_written(tmp_path: Path) -> None:
    from shared.events.registry import PAYLOADS

    result = jetty("schemas", "--out", str(tmp_path / "schemas"), env=hermetic_env())
    assert result.returncode == 0, result.stderr
    written = {p.name for p in (tmp_path / "schemas").iterdir()}
    expected = {f"{name}.schema.json" for name in [*PAYLOADS, "envelope"]}
    assert written == expected
    for name in expected:
        schema = json.loads((tmp_path / "schemas" / name).read_text())
        assert schema["type"] == "object" and schema["properties"]

    printed = jetty("schemas", env=hermetic_env())
    assert printed.returncode == 0, printed.stderr
    assert set(json.loads(printed.stdout)) == {*PAYLOADS, "envelope"}


def test_help_lists_commands() -> None:
    result = jetty("--help", env=hermetic_env())
    assert result.returncode == 0
    for command in ("up", "tokens", "replay", "schemas"):
        assert command in result.stdout


def call_method(
    method: str, url: str, token: str, body: dict[str, object]
) -> tuple[int, dict[str, str], object]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")
