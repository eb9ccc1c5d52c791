"""The three services as separate processes, for ``jetty up`` and the test fixtures.

A :class:`Stack` starts ``python -m services.<name>`` for the proxy, the recorder
and the gateway with their configuration in the environment, appends each one's
output to ``<log_dir>/<name>.log``, and knows when they are ready:

* gateway: ``GET /healthz`` and ``GET /readyz`` answer 200 (it serves only after
  connecting to NATS and loading the tokens);
* proxy and recorder, when the NATS monitoring URL is known: a NATS connection
  named by :func:`shared.bus.source_name` (which ends in ``-<pid>``) exists, and
  for the proxy it subscribes to the chat request subject. Without a monitoring
  URL they count as ready once they are running.

Several worker processes of the gateway (``JETTY_GATEWAY_WORKERS``, default 1:
they share its port with ``SO_REUSEPORT``) and of the proxy
(``JETTY_PROXY_WORKERS``: more members of its NATS queue group) can be started;
the first is named after the service (``gateway``), the others ``gateway-2`` …
Each extra worker is ready once its own NATS connection (and, for a proxy, its
subscription) exists.

Processes can be killed and restarted one by one (tests SIGKILL the recorder
under load). Nothing here restarts a process on its own: ``jetty up`` does that.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jetty_cli import procs
from shared import subjects

# Start order: the consumers first, so the gateway's first request finds a proxy.
SERVICES = ("proxy", "recorder", "runner", "webhooks", "gateway")
# Stop order: stop taking requests, finish them, then drain the events.
STOP_ORDER = ("gateway", "runner", "proxy", "recorder", "webhooks")
# Services that can run as several worker processes, and the setting saying how many.
WORKER_SETTINGS = {"gateway": "JETTY_GATEWAY_WORKERS", "proxy": "JETTY_PROXY_WORKERS"}


def worker_count(env: Mapping[str, str], service: str) -> int:
    """How many processes of ``service`` the environment asks for (at least 1)."""
    setting = WORKER_SETTINGS.get(service)
    raw = env.get(setting, "").strip() if setting else ""
    try:
        return max(1, int(raw)) if raw else 1
    except ValueError:
        raise StackError(f"{setting} must be a whole number, not {raw!r}") from None


def service_of(name: str) -> str:
    """``gateway-2`` -> ``gateway``: the service a worker process belongs to."""
    base, _, index = name.rpartition("-")
    return base if base in WORKER_SETTINGS and index.isdigit() else name


class StackError(Exception):
    """A service did not start or become ready (the message carries log tails)."""


@dataclass(frozen=True)
class S3Config:
    endpoint: str
    access_key: str
    secret_key: str = field(repr=False)
    bucket: str = "jetty"
    secure: bool = False

    def env(self) -> dict[str, str]:
        return {
            "JETTY_S3_ENDPOINT": self.endpoint,
            "JETTY_S3_ACCESS_KEY": self.access_key,
            "JETTY_S3_SECRET_KEY": self.secret_key,
            "JETTY_S3_BUCKET": self.bucket,
            "JETTY_S3_SECURE": "true" if self.secure else "false",
        }


@dataclass
class StackConfig:
    nats_url: str
    database_url: str
    log_dir: Path
    token: str
    collection: str = "default"
    host: str = "127.0.0.1"
    port: int = 8080
    # Environment the services inherit before ours is applied on top.
    base_env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    # Extra variables for every service (e.g. OPENAI_BASE_URL of a fake upstream).
    extra_env: Mapping[str, str] = field(default_factory=dict)
    nats_monitor_url: str | None = None
    # The object store; None leaves JETTY_S3_* to the inherited environment.
    s3: S3Config | None = None
    python: str = sys.executable
    cwd: Path | None = None
    # JETTY_HEALTH_PORT of the services without an HTTP API (their /healthz,
    # /readyz and /metrics); a service not named here serves none.
    health_ports: Mapping[str, int] = field(default_factory=dict)


class ServiceProcess:
    """One service: its process, its log, whether it is meant to be running."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path,
                 cwd: Path | None) -> None:  # fmt: skip
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.starts = 0
        # False after a deliberate kill/stop: its exit is then not a crash.
        self.wanted = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def crashed(self) -> bool:
        """Meant to run but exited."""
        return self.wanted and self.proc is not None and self.proc.poll() is not None

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc is not None else None

    def start(self) -> None:
        if self.alive:
            return
        if self.proc is not None:
            self.proc.wait()  # reap it so no zombie or ResourceWarning remains
        self.proc = procs.spawn(self.argv, log_path=self.log_path, env=self.env, cwd=self.cwd)
        self.started_at = time.monotonic()
        self.starts += 1
        self.wanted = True

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 10.0) -> int | None:
        """Send ``sig`` and wait for the exit; returns the exit code."""
        self.wanted = False
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10.0)
        return self.proc.returncode

    def stop(self, timeout: float = 15.0) -> int | None:
        self.wanted = False
        if self.proc is None:
            return None
        return procs.terminate(self.proc, timeout)


class Stack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        config.log_dir.mkdir(parents=True, exist_ok=True)
        self.services: dict[str, ServiceProcess] = {}
        for service in SERVICES:
            env = self._env_for(service)
            for index in range(1, worker_count(env, service) + 1):
                name = service if index == 1 else f"{service}-{index}"
                if index > 1:
                    # One health port per service: the first worker's.
                    env = {k: v for k, v in env.items() if k != "JETTY_HEALTH_PORT"}
                self.services[name] = ServiceProcess(
                    name,
                    [config.python, "-m", f"services.{service}"],
                    env,
                    config.log_dir / f"{name}.log",
                    config.cwd,
                )
        #: every process's name, in start order (``gateway-2`` after ``gateway``)
        self.names = tuple(self.services)

    def workers(self, service: str) -> list[ServiceProcess]:
        """The processes of one service (one unless it runs several workers)."""
        return [p for name, p in self.services.items() if service_of(name) == service]

    def _env_for(self, name: str) -> dict[str, str]:
        cfg = self.config
        env = dict(cfg.base_env)
        env.update(
            {
                "JETTY_NATS_URL": cfg.nats_url,
                "JETTY_DATABASE_URL": cfg.database_url,
                "JETTY_BOOTSTRAP_TOKEN": cfg.token,
                "JETTY_BOOTSTRAP_COLLECTION": cfg.collection,
                # Lines reach the log file (and `jetty up`'s console) as written.
                "PYTHONUNBUFFERED": "1",
            }
        )
        if cfg.s3 is not None:
            env.update(cfg.s3.env())
        if name == "runner":
            # Sandboxes reach the gateway through the runner's relay. Their
            # workspaces stay in the runner's default (under the system temp
            # folder), which the unprivileged sandbox user can reach.
            env["JETTY_RUNNER_GATEWAY_URL"] = self.base_url
        if name == "gateway":
            env["JETTY_HOST"] = cfg.host
            env["JETTY_PORT"] = str(cfg.port)
        else:
            # Only the gateway listens on JETTY_PORT; keep the others off it.
            env.pop("JETTY_HOST", None)
            env.pop("JETTY_PORT", None)
        if name in cfg.health_ports:
            env["JETTY_HEALTH_PORT"] = str(cfg.health_ports[name])
        env.update(cfg.extra_env)
        return env

    # -- addresses ---------------------------------------------------------

    @property
    def base_url(self) -> str:
        host = self.config.host
        if host in ("0.0.0.0", "", "::"):
            host = "127.0.0.1"
        return f"http://{host}:{self.config.port}"

    @property
    def token(self) -> str:
        return self.config.token

    @property
    def collection(self) -> str:
        return self.config.collection

    @property
    def database_url(self) -> str:
        return self.config.database_url

    @property
    def nats_url(self) -> str:
        return self.config.nats_url

    def __getitem__(self, name: str) -> ServiceProcess:
        try:
            return self.services[name]
        except KeyError:
            raise KeyError(f"no service {name!r}; services are {', '.join(self.names)}") from None

    def __iter__(self) -> Iterator[ServiceProcess]:
        return iter(self.services.values())

    # -- readiness ---------------------------------------------------------

    def _nats_connections(self) -> list[dict[str, Any]] | None:
        if self.config.nats_monitor_url is None:
            return None
        conns: list[dict[str, Any]] = []
        # One monitor URL per server (comma separated: a cluster's clients spread).
        for monitor in self.config.nats_monitor_url.split(","):
            try:
                status, body = procs.http_get(monitor + "/connz?subs=1&limit=1024")
            except OSError:
                continue
            if status == 200:
                conns += json.loads(body).get("connections") or []
        return conns

    def not_ready(self, names: tuple[str, ...] | None = None) -> str | None:
        """What is not ready yet among ``names`` (None when all are)."""
        conns = None
        for name in names if names is not None else self.names:
            service = self[name]
            if not service.alive:
                return f"{name} is not running"
            if name == "gateway":
                for path in ("/healthz", "/readyz"):
                    try:
                        status, _ = procs.http_get(self.base_url + path, timeout=1.0)
                    except OSError as exc:
                        return f"gateway {path}: {exc}"
                    if status != 200:
                        return f"gateway {path} answered {status}"
                continue
            if conns is None:
                conns = self._nats_connections()
            if conns is None:
                continue  # no monitoring endpoint: running is all we can tell
            suffix = f"-{service.pid}"
            mine = [c for c in conns if str(c.get("name", "")).endswith(suffix)]
            if not mine:
                return f"{name} (pid {service.pid}) has no NATS connection yet"
            if service_of(name) == "proxy" and not any(
                subjects.CHAT_REQUEST in (c.get("subscriptions_list") or []) for c in mine
            ):
                return f"proxy (pid {service.pid}) is not subscribed to {subjects.CHAT_REQUEST}"
        return None

    def _raise_if_dead(self, names: tuple[str, ...] | None) -> None:
        for name in names if names is not None else self.names:
            service = self[name]
            if service.proc is not None and service.proc.poll() is not None:
                raise StackError(
                    f"{name} exited with code {service.returncode} while starting\n"
                    + self.log_tails((name,))
                )

    def wait_ready(self, timeout: float = 60.0, names: tuple[str, ...] | None = None) -> None:
        deadline = time.monotonic() + timeout
        while (problem := self.not_ready(names)) is not None:
            self._raise_if_dead(names)
            if time.monotonic() >= deadline:
                raise StackError(f"not ready after {timeout:.0f}s: {problem}\n" + self.log_tails())
            time.sleep(0.05)

    async def wait_ready_async(
        self, timeout: float = 60.0, names: tuple[str, ...] | None = None
    ) -> None:
        """Like :meth:`wait_ready` without blocking the event loop (probes in a thread)."""
        deadline = time.monotonic() + timeout
        while (problem := await asyncio.to_thread(self.not_ready, names)) is not None:
            self._raise_if_dead(names)
            if time.monotonic() >= deadline:
                raise StackError(f"not ready after {timeout:.0f}s: {problem}\n" + self.log_tails())
            await asyncio.sleep(0.05)

    # -- lifecycle ---------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        for service in self:
            service.start()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int | None:
        """Kill one service (SIGKILL by default) and wait until it is gone."""
        return self[name].kill(sig)

    def start_service(self, name: str) -> None:
        self[name].start()

    def restart(self, name: str, *, wait: bool = True, timeout: float = 60.0) -> None:
        service = self[name]
        if service.alive:
            service.stop()
        service.start()
        if wait:
            self.wait_ready(timeout, (name,))

    async def restart_async(self, name: str, *, wait: bool = True, timeout: float = 60.0) -> None:
        service = self[name]
        if service.alive:
            await asyncio.to_thread(service.stop)
        service.start()  # spawned from this (main) thread, see procs.spawn
        if wait:
            await self.wait_ready_async(timeout, (name,))

    def stop(self, timeout: float = 15.0) -> dict[str, int | None]:
        """SIGTERM in :data:`STOP_ORDER`, each given ``timeout`` before SIGKILL."""
        order = [p for service in STOP_ORDER for p in self.workers(service)]
        for process in order:
            process.wanted = False
            if process.alive and process.proc is not None:
                process.proc.send_signal(signal.SIGTERM)
        # The gateway goes first and alone: once it stops taking requests the
        # proxy and recorder can finish what is in flight.
        for process in self.workers("gateway"):
            process.stop(timeout)
        return {p.name: p.stop(timeout) for p in order}

    def crashed(self) -> list[ServiceProcess]:
        return [s for s in self if s.crashed]

    def log_tails(self, names: tuple[str, ...] | None = None, lines: int = 40) -> str:
        parts = []
        for name in names if names is not None else self.names:
            path = self[name].log_path
            parts.append(f"--- {name} ({path}) ---\n{procs.tail(path, lines) or '(empty)'}")
        return "\n".join(parts)
