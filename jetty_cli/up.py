"""``jetty up`` (what ``make up`` runs): the whole stack on one machine, in the foreground.

Start: NATS, PostgreSQL and the object store (embedded, unless ``JETTY_NATS_URL`` /
``JETTY_DATABASE_URL`` / ``JETTY_S3_ENDPOINT`` name existing servers), migrations,
the development token, then proxy, recorder, runner and gateway as separate processes.
Then it follows their logs and restarts any that dies (with backoff). Ctrl-C or
SIGTERM stops the services, then the object store, PostgreSQL and NATS, and exits
0. State lives in ``$JETTY_HOME``
(see :mod:`jetty_cli.home`) and survives restarts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
import traceback
from datetime import UTC, datetime
from types import FrameType

from jetty_cli import procs
from jetty_cli.embedded import (
    EmbeddedError,
    EmbeddedNats,
    EmbeddedObjectStore,
    EmbeddedPostgres,
)
from jetty_cli.home import Home, StackInfo, checkout_root
from jetty_cli.logview import LogFollower
from jetty_cli.stack import S3Config, Stack, StackConfig, StackError
from jetty_cli.tokens_cmd import register_token
from shared.tokens import generate_token, valid_collection

READY_TIMEOUT = 120.0
TICK = 0.2
# Restart backoff: doubles per quick crash, resets after a minute of uptime.
BACKOFF_FIRST, BACKOFF_MAX, STABLE_AFTER = 1.0, 30.0, 60.0
PG_CHECK_EVERY = 5.0


class StartupError(Exception):
    pass


class _Interrupted(Exception):
    """SIGINT/SIGTERM while starting: abandon the start, clean up, exit 0."""


class Up:
    def __init__(self, home: Home) -> None:
        self.home = home
        self.console = LogFollower()
        self.nats: EmbeddedNats | None = None
        self.pg: EmbeddedPostgres | None = None
        self.s3: EmbeddedObjectStore | None = None
        self.stack: Stack | None = None
        self.starting = True
        self.stop_signal: int | None = None
        self.backoff: dict[str, float] = {}
        self.restart_at: dict[str, float] = {}

    # -- signals -----------------------------------------------------------

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.stop_signal is not None:
            self.console.say("already stopping; please wait")
            return
        self.stop_signal = signum
        if self.starting:
            raise _Interrupted

    # -- start -------------------------------------------------------------

    def _clean_stale(self) -> None:
        """A `jetty up` that was SIGKILLed leaves stack.json and maybe processes."""
        info = self.home.read_stack()
        if info is None:
            return
        leftovers = [(n, p) for n, p in info.services.items() if p]
        if info.nats_pid:
            leftovers.append(("nats-server", info.nats_pid))
        for name, pid in leftovers:
            argv = " ".join(procs.cmdline(pid))
            if procs.pid_alive(pid) and (f"services.{name}" in argv or name in argv):
                self.console.say(f"stopping {name} (pid {pid}) left over from an earlier run")
                procs.kill_pid(pid)
        self.home.clear_stack()

    def _start_nats(self) -> tuple[str, str | None]:
        external = os.environ.get("JETTY_NATS_URL")
        if external:
            self.console.say(f"using NATS at {external}")
            return external, None
        self.nats = EmbeddedNats(self.home.nats_dir, log_path=self.home.logs_dir / "nats.log")
        self.nats.start()
        self.console.say(f"NATS (JetStream) on {self.nats.url}, store {self.nats.store_dir}")
        return self.nats.url, self.nats.monitor_url

    def _start_postgres(self) -> str:
        external = os.environ.get("JETTY_DATABASE_URL")
        if external:
            self.console.say("using the PostgreSQL server named by JETTY_DATABASE_URL")
            return external
        self.pg = EmbeddedPostgres(self.home.pg_dir)
        first = not self.pg.initialised
        if first:
            self.console.say("initialising PostgreSQL (first start)")
        self.pg.start()
        self.console.say(f"PostgreSQL on {self.pg.host}:{self.pg.port}, data {self.pg.data_dir}")
        if self.pg.relocated_from is not None:
            self.console.say(
                f"(its user cannot enter {self.pg.relocated_from}, so the data lives in "
                f"{self.pg.base_dir}; {self.pg.relocated_from / 'LOCATION'} says so)"
            )
        return self.pg.dsn

    def _start_object_store(self) -> S3Config | None:
        """None when ``JETTY_S3_ENDPOINT`` names a server: the services then take
        ``JETTY_S3_*`` from the environment they inherit."""
        external = os.environ.get("JETTY_S3_ENDPOINT")
        if external:
            self.console.say(f"using the object store at {external}")
            return None
        self.s3 = EmbeddedObjectStore(self.home.s3_dir, log_path=self.home.logs_dir / "nanio.log")
        self.s3.start()
        self.console.say(f"object store (S3) on {self.s3.url}, data {self.s3.data_dir}")
        return S3Config(
            self.s3.endpoint,
            self.s3.access_key,
            self.s3.secret_key,
            bucket=os.environ.get("JETTY_S3_BUCKET", "jetty"),
        )

    def _token(self, nats_url: str, collection: str) -> str:
        token = os.environ.get("JETTY_BOOTSTRAP_TOKEN") or self.home.read_dev_token()
        if token is None:
            token = generate_token()
            self.home.write_dev_token(token)
        if asyncio.run(register_token(nats_url, token, collection, "dev")):
            self.console.say(f"registered the development token for collection {collection!r}")
        return token

    def _start(self) -> None:
        host = os.environ.get("JETTY_HOST", "127.0.0.1")
        port = int(os.environ.get("JETTY_PORT", "8080"))
        collection = os.environ.get("JETTY_BOOTSTRAP_COLLECTION", "default")
        if not valid_collection(collection):
            raise StartupError(f"JETTY_BOOTSTRAP_COLLECTION={collection!r} is not a valid name")
        probe_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        if procs.port_open(probe_host, port):
            raise StartupError(
                f"{probe_host}:{port} is already in use; set JETTY_PORT to another port"
            )
        self._clean_stale()
        nats_url, monitor_url = self._start_nats()
        database_url = self._start_postgres()
        s3 = self._start_object_store()

        from shared.db.pool import apply_migrations

        asyncio.run(apply_migrations(database_url))
        self.console.say("database migrations applied")
        token = self._token(nats_url, collection)

        self.stack = Stack(
            StackConfig(
                nats_url=nats_url,
                database_url=database_url,
                log_dir=self.home.logs_dir,
                token=token,
                collection=collection,
                host=host,
                port=port,
                nats_monitor_url=monitor_url,
                s3=s3,
                cwd=checkout_root(),
                health_ports={
                    name: procs.free_port() for name in ("proxy", "recorder", "runner", "webhooks")
                },
                # Secrets work out of the box; an operator's own key wins.
                extra_env={}
                if os.environ.get("JETTY_SECRETS_KEY")
                else {"JETTY_SECRETS_KEY": self.home.secrets_key()},
            )
        )
        for service in self.stack:
            self.console.follow(service.name, service.log_path)
        self.stack.start(READY_TIMEOUT)
        self._write_info()
        self.console.pump()  # the services' start-up lines, then the banner last
        self._banner(token, collection)

    def _write_info(self) -> None:
        assert self.stack is not None
        self.home.write_stack(
            StackInfo(
                pid=os.getpid(),
                base_url=self.stack.base_url,
                collection=self.stack.collection,
                nats_url=self.stack.nats_url,
                nats_monitor_url=self.stack.config.nats_monitor_url,
                database_url=self.stack.database_url,
                nats_pid=self.nats.pid if self.nats else None,
                services={s.name: s.pid or 0 for s in self.stack},
                started_at=datetime.now(UTC),
            )
        )

    def _banner(self, token: str, collection: str) -> None:
        assert self.stack is not None
        url = self.stack.base_url
        where = (
            f"kept in {self.home.dev_token}"
            if not os.environ.get("JETTY_BOOTSTRAP_TOKEN")
            else "from JETTY_BOOTSTRAP_TOKEN"
        )
        print(
            f"\nJetty Flows is up.\n"
            f"  URL:        {url}\n"
            f"  Console:    {url}/ui/  (sign in with the token)\n"
            f"  Token:      {token}\n"
            f"  Collection: {collection}  (token {where})\n"
            f"  State:      {self.home.root}\n"
            f"  Metrics:    {url}/metrics  (Prometheus; {self._metrics_elsewhere()})\n\n"
            f"Try it:\n"
            f"  curl -s {url}/v1/chat/completions \\\n"
            f"    -H 'Authorization: Bearer {token}' \\\n"
            f"    -H 'Content-Type: application/json' \\\n"
            f'    -d \'{{"model": "mock/echo", "messages": '
            f'[{{"role": "user", "content": "Hello, Jetty"}}]}}\'\n\n'
            f"More tokens: jetty tokens create --collection my-org.  Ctrl-C stops everything.\n",
            flush=True,
        )

    def _metrics_elsewhere(self) -> str:
        assert self.stack is not None
        ports = self.stack.config.health_ports
        return ", ".join(f"{name} :{port}/metrics" for name, port in ports.items())

    # -- supervise ---------------------------------------------------------

    def _supervise(self) -> None:
        assert self.stack is not None
        last_pg_check = time.monotonic()
        while self.stop_signal is None:
            self.console.pump()
            now = time.monotonic()
            changed = False
            if self.nats is not None and not self.nats.running:
                self.console.say("nats-server exited; starting it again")
                self.nats.start()
                changed = True
            if self.s3 is not None and not self.s3.running:
                self.console.say("the object store exited; starting it again")
                self.s3.start()
            if self.pg is not None and now - last_pg_check > PG_CHECK_EVERY:
                last_pg_check = now
                if not self.pg.running:
                    self.console.say("PostgreSQL is down; starting it again")
                    self.pg.start()
            for service in self.stack:
                if service.crashed and service.name not in self.restart_at:
                    uptime = now - service.started_at
                    delay = self.backoff.get(service.name, BACKOFF_FIRST / 2) * 2
                    if uptime > STABLE_AFTER:
                        delay = BACKOFF_FIRST
                    delay = min(delay, BACKOFF_MAX)
                    self.backoff[service.name] = delay
                    self.restart_at[service.name] = now + delay
                    self.console.say(
                        f"{service.name} exited unexpectedly (code {service.returncode}); "
                        f"restarting in {delay:.0f}s"
                    )
                when = self.restart_at.get(service.name)
                if when is not None and now >= when:
                    del self.restart_at[service.name]
                    service.start()
                    changed = True
                    self.console.say(f"{service.name} restarted (pid {service.pid})")
            if changed:
                self._write_info()
            time.sleep(TICK)

    # -- stop --------------------------------------------------------------

    def _shutdown(self) -> None:
        if self.stack is not None:
            self.console.say("stopping services")
            codes = self.stack.stop()
            self.console.pump()
            odd = {n: c for n, c in codes.items() if c not in (0, None, -signal.SIGTERM)}
            if odd:
                self.console.say(f"exit codes: {odd}")
        if self.s3 is not None:
            self.console.say("stopping the object store")
            self.s3.stop()
        if self.pg is not None:
            self.console.say("stopping PostgreSQL")
            self.pg.stop()
        if self.nats is not None:
            self.console.say("stopping NATS")
            self.nats.stop()
        self.home.clear_stack()

    def run(self) -> int:
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        code = 0
        try:
            try:
                self._start()
                self.starting = False
                if self.stop_signal is None:
                    self._supervise()
            except _Interrupted:
                self.console.say("interrupted while starting")
            except (StartupError, StackError, EmbeddedError, TimeoutError) as exc:
                self.console.pump()
                self.console.say(f"could not start: {exc}")
                code = 1
            except Exception:
                self.console.pump()
                self.console.say("failed:\n" + traceback.format_exc())
                code = 1
            finally:
                self.starting = False
                self._shutdown()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if code == 0:
            self.console.say("stopped")
        return code


def run(_args: argparse.Namespace) -> int:
    home = Home()
    home.ensure()
    if not home.try_lock():
        info = home.read_stack()
        where = f" (pid {info.pid}, {info.base_url})" if info else ""
        print(f"jetty: a stack is already running from {home.root}{where}", file=sys.stderr)
        return 1
    try:
        return Up(home).run()
    finally:
        home.unlock()
