"""Running isolated stacks for tests and benchmarks (used by ``tests/conftest.py``).

Each stack gets its own NATS server and object store (a bucket per stack would do,
but a server per stack lets a test stop it) (streams, the recorder's durable consumer and
the proxies' queue group are global to a NATS account, so two stacks on one server
would share work) and a fresh migrated database, on the shared PostgreSQL server
or, if asked, on a private one (for tests that stop Postgres).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

from jetty_cli import procs
from jetty_cli.embedded import EmbeddedNats, EmbeddedObjectStore, EmbeddedPostgres
from jetty_cli.stack import S3Config, Stack, StackConfig
from jetty_cli.tokens_cmd import create_token, wait_accepted
from shared.tokens import generate_token

T = TypeVar("T")

HTTP_TIMEOUT = 30.0

# Variables from the developer's shell that must not leak into a test stack.
_FOREIGN_PREFIXES = ("JETTY_", "OPENAI_", "ANTHROPIC_", "GEMINI_", "GOOGLE_API")


def run_sync(factory: Callable[[], Coroutine[Any, Any, T]], timeout: float = 120.0) -> T:
    """Run a coroutine to completion from sync code, even inside a running loop
    (on a private loop in a worker thread)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result(timeout=timeout)


def traversable_tmpdir(prefix: str) -> Path:
    """A temporary directory under the system temp dir that the unprivileged
    PostgreSQL user may enter (pytest's own tmp dirs are 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o711)
    return path


def hermetic_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_PREFIXES)}


def new_database(pg: EmbeddedPostgres, *, migrate: bool) -> tuple[str, str]:
    """Create ``test_<random>`` (migrated if asked); returns (name, dsn)."""
    name = "test_" + secrets.token_hex(6)
    dsn = pg.create_database(name)
    if migrate:
        from shared.db.pool import apply_migrations

        run_sync(lambda: apply_migrations(dsn))
    return name, dsn


class TestStack(Stack):
    """A :class:`Stack` with the servers it runs on, for tests to poke at."""

    __test__ = False  # not a test class, whatever pytest's name matching thinks

    def __init__(
        self,
        config: StackConfig,
        *,
        nats: EmbeddedNats,
        pg: EmbeddedPostgres,
        s3: EmbeddedObjectStore,
        database_name: str,
        owns_pg: bool,
    ) -> None:
        super().__init__(config)
        self.nats = nats
        self.pg = pg
        self.s3 = s3
        self.database_name = database_name
        self.owns_pg = owns_pg
        self.closed = False

    async def create_token(self, collection: str, name: str = "") -> str:
        """A new API token for ``collection``, returned once the gateway accepts it."""
        token = await create_token(self.nats.url, collection, name)
        await asyncio.to_thread(wait_accepted, self.base_url, token)
        return token

    def heal(self, timeout: float = 60.0) -> None:
        """Bring back what a test stopped on purpose, so the next test finds a whole stack."""
        if not self.nats.running:
            self.nats.start()
        if not self.pg.running:
            self.pg.start()
        if not self.s3.running:
            self.s3.start()
        # Killed on purpose or crashed (the guard reports crashes separately).
        down = [s.name for s in self if not s.alive]
        for name in down:
            self.start_service(name)
        if down:
            self.wait_ready(timeout, tuple(down))

    def __enter__(self) -> TestStack:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop everything now (otherwise the factory does it at the end of the session)."""
        if self.closed:
            return
        self.closed = True
        try:
            self.stop()
        finally:
            self.nats.stop()
            self.s3.stop()
            if self.owns_pg:
                self.pg.stop()
                shutil.rmtree(self.pg.base_dir)
            elif self.pg.running:
                self.pg.drop_database(self.database_name)


class StackFactory:
    """Starts :class:`TestStack` instances and remembers them for clean-up."""

    def __init__(self, root: Path, pg: Callable[[], EmbeddedPostgres]) -> None:
        self.root = root
        self._shared_pg = pg
        self.stacks: list[TestStack] = []

    def __call__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        own_postgres: bool = False,
        collection: str = "default",
        ready_timeout: float = 90.0,
        nats: EmbeddedNats | None = None,
        nats_url: str | None = None,
        nats_monitor_url: str | None = None,
    ) -> TestStack:
        """``nats``/``nats_url``/``nats_monitor_url``: run on a NATS the caller
        started (e.g. one node of a cluster, and the URLs of all its nodes,
        comma separated) instead of a fresh one."""
        index = len(self.stacks)
        base = self.root / f"stack{index}"
        if nats is None:
            nats = EmbeddedNats(base / "nats", log_path=base / "logs" / "nats.log").start()
        s3 = EmbeddedObjectStore(base / "s3", log_path=base / "logs" / "nanio.log")
        try:
            s3.start()
            if own_postgres:
                pg = EmbeddedPostgres(traversable_tmpdir("jetty-test-pg-"), durable=False).start()
            else:
                pg = self._shared_pg()
            db_name, dsn = new_database(pg, migrate=True)
        except BaseException:
            nats.stop()
            s3.stop()
            raise
        config = StackConfig(
            nats_url=nats_url or nats.url,
            database_url=dsn,
            log_dir=base / "logs",
            token=generate_token(),
            collection=collection,
            port=procs.free_port(),
            base_env=hermetic_env(),
            extra_env=dict(env or {}),
            nats_monitor_url=nats_monitor_url or nats.monitor_url,
            s3=S3Config(s3.endpoint, s3.access_key, s3.secret_key),
            health_ports={
                name: procs.free_port() for name in ("proxy", "recorder", "runner", "webhooks")
            },
        )
        stack = TestStack(
            config, nats=nats, pg=pg, s3=s3, database_name=db_name, owns_pg=own_postgres
        )
        self.stacks.append(stack)
        try:
            stack.start(ready_timeout)
        except BaseException:
            stack.close()
            raise
        return stack

    def live(self) -> list[TestStack]:
        return [s for s in self.stacks if not s.closed]

    def close_all(self) -> None:
        errors: list[BaseException] = []
        for stack in self.live():
            try:
                stack.close()
            except Exception as exc:  # close the others, then report
                errors.append(exc)
        if errors:
            raise errors[0]


def call(
    url: str, token: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, str], Any]:
    """POST ``body`` (or GET when None) with a bearer token; (status, headers, json)."""
    request = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")


def chat(base_url: str, token: str, text: str) -> tuple[int, dict[str, str], Any]:
    return call(
        base_url + "/v1/chat/completions",
        token,
        {"model": "mock/echo", "messages": [{"role": "user", "content": text}]},
    )


class JettyUpProcess:
    """``jetty up`` as a subprocess with its own ``JETTY_HOME`` and port (for tests).

    Its console goes to ``console_path``; :meth:`start` returns once the banner
    with the URL and token is printed."""

    def __init__(
        self,
        home: Path,
        console_path: Path,
        *,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.home = home
        self.console_path = console_path
        self.port = port or procs.free_port()
        self.env = {
            **hermetic_env(),
            "JETTY_HOME": str(home),
            "JETTY_HOST": "127.0.0.1",
            "JETTY_PORT": str(self.port),
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.token = ""

    @staticmethod
    def argv(*args: str) -> list[str]:
        """The installed ``jetty`` console script (falls back to ``python -m``)."""
        script = Path(sys.executable).parent / "jetty"
        if script.is_file():
            return [str(script), *args]
        return [sys.executable, "-m", "jetty_cli", *args]

    def output(self) -> str:
        try:
            return self.console_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, timeout: float = 180.0) -> JettyUpProcess:
        self.console_path.unlink(missing_ok=True)
        self.proc = procs.spawn(self.argv("up"), log_path=self.console_path, env=self.env)
        proc = self.proc
        found: dict[str, str] = {}

        def banner_printed() -> bool:
            for line in self.output().splitlines():
                key, _, value = line.strip().partition(":")
                if key in ("URL", "Token") and value.strip():
                    found[key] = value.strip()
            return "URL" in found and "Token" in found

        try:
            procs.wait_until(
                banner_printed,
                timeout=timeout,
                interval=0.1,
                describe="jetty up",
                alive=lambda: proc.poll() is None,
            )
        except (TimeoutError, RuntimeError) as exc:
            self.stop()
            raise RuntimeError(f"{exc}; console:\n{self.output()}") from exc
        self.url, self.token = found["URL"], found["Token"]
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 120.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 120.0) -> int | None:
        """SIGTERM and wait (SIGKILL only past ``timeout``); returns the exit code."""
        if self.proc is None:
            return None
        return procs.terminate(self.proc, timeout)
