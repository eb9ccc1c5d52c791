"""Where the embedded stack keeps its state (``$JETTY_HOME``, default ``<checkout>/.jetty``).

Layout::

    nats/            JetStream store (events, tokens, claim checks)
    pg/              PostgreSQL cluster (data/ and postgres.log)
    logs/            one log per service, nats.log
    run/up.lock      held (flock) by the running `jetty up`; free means no stack
    run/stack.json   URLs and pids of the running stack (removed on clean exit)
    run/dev-token    the development API token (mode 0600), kept across restarts

The lock, not the presence of ``stack.json``, says whether a stack is running: a
``jetty up`` that was SIGKILLed leaves the file behind but not the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO

from pydantic import BaseModel, ConfigDict


class StackInfo(BaseModel):
    """Contents of ``run/stack.json``."""

    model_config = ConfigDict(extra="ignore")

    pid: int
    base_url: str
    collection: str
    nats_url: str
    nats_monitor_url: str | None = None
    database_url: str
    # Embedded NATS server pid (None when an external server is used).
    nats_pid: int | None = None
    services: dict[str, int] = {}
    started_at: datetime


def checkout_root() -> Path | None:
    """The source checkout this package runs from (editable install), if any."""
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file() and (root / "jetty_cli").is_dir():
        return root
    return None


class Home:
    def __init__(self, root: Path | None = None) -> None:
        if root is None:
            env = os.environ.get("JETTY_HOME")
            root = Path(env) if env else (checkout_root() or Path.cwd()) / ".jetty"
        self.root = root.absolute()
        self.nats_dir = self.root / "nats"
        self.pg_dir = self.root / "pg"
        self.s3_dir = self.root / "s3"
        self.logs_dir = self.root / "logs"
        self.run_dir = self.root / "run"
        self.stack_json = self.run_dir / "stack.json"
        self.dev_token = self.run_dir / "dev-token"
        self.secrets_key_path = self.root / "secrets.key"
        self.lock_path = self.run_dir / "up.lock"
        self._lock_file: IO[str] | None = None

    def ensure(self) -> None:
        for path in (self.root, self.logs_dir, self.run_dir):
            path.mkdir(parents=True, exist_ok=True)

    # -- the lock ----------------------------------------------------------

    def try_lock(self) -> bool:
        """Take ``run/up.lock`` without waiting; False if another process holds it."""
        if self._lock_file is not None:
            return True
        self.ensure()
        handle = self.lock_path.open("a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._lock_file = handle
        return True

    def unlock(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    @contextlib.contextmanager
    def locked(self) -> Iterator[bool]:
        acquired = self.try_lock()
        try:
            yield acquired
        finally:
            if acquired:
                self.unlock()

    # -- stack.json --------------------------------------------------------

    def write_stack(self, info: StackInfo) -> None:
        _write_private(self.stack_json, info.model_dump_json(indent=2) + "\n")

    def read_stack(self) -> StackInfo | None:
        try:
            raw = self.stack_json.read_text()
        except FileNotFoundError:
            return None
        return StackInfo.model_validate_json(raw)

    def wait_for_stack(self, timeout: float = 60.0) -> StackInfo:
        """The running stack's info; it may still be starting, so wait for the file."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.read_stack()
            if info is not None:
                return info
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"a `jetty up` holds {self.lock_path} but wrote no {self.stack_json} "
                    f"within {timeout:.0f}s"
                )
            time.sleep(0.1)

    def clear_stack(self) -> None:
        self.stack_json.unlink(missing_ok=True)

    # -- dev token ---------------------------------------------------------

    def read_dev_token(self) -> str | None:
        try:
            token = self.dev_token.read_text().strip()
        except FileNotFoundError:
            return None
        return token or None

    def write_dev_token(self, token: str) -> None:
        _write_private(self.dev_token, token + "\n")

    # -- secrets key -------------------------------------------------------

    def secrets_key(self) -> str:
        """The embedded stack's ``JETTY_SECRETS_KEY``, made once and kept (0600) beside
        its data: secrets stored by one ``jetty up`` open in the next."""
        try:
            key = self.secrets_key_path.read_text().strip()
        except FileNotFoundError:
            key = ""
        if not key:
            from shared.secrets import new_key

            key = new_key()
            _write_private(self.secrets_key_path, key + "\n")
        return key


def _write_private(path: Path, text: str) -> None:
    """Write atomically with mode 0600 (the file may hold a token or a DSN)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)  # O_CREAT's mode does not apply to an existing file
    os.replace(tmp, path)
