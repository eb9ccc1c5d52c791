"""The ``local`` sandbox backend (bubblewrap) on real parts: a real S3-compatible
store for inputs and artifacts, real NATS and PostgreSQL servers as the host
services a sandbox must not reach, a small aiohttp server standing in for the
gateway, and the real agent CLIs."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from jetty_cli.embedded import EmbeddedNats, EmbeddedObjectStore, EmbeddedPostgres
from jetty_cli.testing import traversable_tmpdir
from services.runner.agents.base import AgentCommand
from services.runner.sandbox.base import InputFile, Limits, SandboxError, SandboxExit, SandboxSpec
from services.runner.sandbox.local import LocalSandbox, LocalSandboxBackend, LocalSandboxSettings
from shared.objectstore import ObjectStore
from shared.settings import CommonSettings

ROOT = Path(__file__).resolve().parent.parent
AGENTS = ROOT / "agents" / "node_modules"
GATEWAY_REPLY = "stand-in gateway: hello sandbox"


@pytest.fixture(scope="module")
def s3() -> Iterator[EmbeddedObjectStore]:
    base = traversable_tmpdir("jetty-sbx-s3-")
    with EmbeddedObjectStore(base) as server:
        yield server
    shutil.rmtree(base)


@pytest.fixture(scope="module")
async def store(s3: EmbeddedObjectStore) -> ObjectStore:
    settings = CommonSettings(
        s3_endpoint=s3.endpoint, s3_access_key=s3.access_key, s3_secret_key=s3.secret_key
    )
    objects = ObjectStore.from_settings(settings)
    await objects.ensure_bucket()
    return objects


@pytest.fixture(scope="module")
async def gateway() -> AsyncIterator[int]:
    """A stand-in for the gateway on 127.0.0.1 (the relay's only destination)."""

    async def probe(request: web.Request) -> web.Response:
        return web.Response(text=f"{GATEWAY_REPLY} {request.query.get('n', '')}")

    app = web.Application()
    app.router.add_get("/probe", probe)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port: int = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield port
    await runner.cleanup()


@pytest.fixture(scope="module")
def runs_root() -> Iterator[Path]:
    path = traversable_tmpdir("jetty-sbx-runs-")
    yield path
    shutil.rmtree(path)


@pytest.fixture(scope="module")
async def backend(
    store: ObjectStore, gateway: int, runs_root: Path
) -> AsyncIterator[LocalSandboxBackend]:
    settings = LocalSandboxSettings(
        root=runs_root, agents_dir=AGENTS, gateway_host="127.0.0.1", gateway_port=gateway
    )
    sandboxes = LocalSandboxBackend(settings, store)
    yield sandboxes
    await sandboxes.close()


async def _put(store: ObjectStore, key: str, data: bytes) -> None:
    async def one() -> AsyncIterator[bytes]:
        yield data

    await store.put_stream(key, one(), content_type="application/octet-stream", limit=len(data))


def _spec(
    name: str,
    argv: list[str],
    *,
    inputs: list[InputFile] | None = None,
    limits: Limits | None = None,
    env: dict[str, str] | None = None,
    home_files: dict[str, bytes] | None = None,
    stdin: bytes | None = None,
) -> SandboxSpec:
    return SandboxSpec(
        trajectory_id=name,
        collection="sbx",
        task="tests",
        command=AgentCommand(argv, env or {}, home_files or {}, stdin),
        inputs=inputs or [],
        limits=limits or Limits(timeout_s=60),
        artifact_prefix=f"sbx/tests/{name}/",
    )


async def _run(backend: LocalSandboxBackend, spec: SandboxSpec) -> tuple[list[str], SandboxExit]:
    """Start, read every line, wait; the caller destroys (or uses the sandbox)."""
    sandbox = await backend.start(spec)
    try:
        lines = [line async for line in sandbox.lines()]
        return lines, await sandbox.wait()
    finally:
        await sandbox.destroy()


def _sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", script]


# -- files in, lines out, files out -------------------------------------------------


async def test_inputs_lines_and_outputs(backend: LocalSandboxBackend, store: ObjectStore) -> None:
    await _put(store, "sbx/uploads/data.txt", b"alpha\nbeta\n")
    await _put(store, "sbx/uploads/keep.csv", b"a,b\n1,2\n")
    await _put(store, "sbx/uploads/edit.txt", b"before\n")
    spec = _spec(
        "files",
        _sh(
            'while read -r w; do echo "word: $w"; done < in/data.txt\n'
            "mkdir -p results && printf 'computed\\n' > results/out.txt\n"
            "printf '# Report\\n' > results/report.md\n"
            "echo after >> edit.txt\n"
            "ln -s /etc/hostname results/link\n"
            "mkfifo results/fifo\n"
            "echo done"
        ),
        inputs=[
            InputFile("in/data.txt", "sbx/uploads/data.txt"),
            InputFile("keep.csv", "sbx/uploads/keep.csv"),
            InputFile("edit.txt", "sbx/uploads/edit.txt"),
        ],
    )
    sandbox = await backend.start(spec)
    try:
        lines = [line async for line in sandbox.lines()]
        end = await sandbox.wait()
        outputs = {o.path: o for o in await sandbox.collect_outputs()}
    finally:
        await sandbox.destroy()

    assert lines == ["word: alpha", "word: beta", "done"]
    assert end == SandboxExit(exit_code=0, stderr_tail="")
    # the unchanged inputs, the symlink and the fifo are not artifacts
    assert sorted(outputs) == ["edit.txt", "results/out.txt", "results/report.md"]
    expected = {
        "results/out.txt": (b"computed\n", "text/plain"),
        "results/report.md": (b"# Report\n", "text/markdown"),
        "edit.txt": (b"before\nafter\n", "text/plain"),
    }
    for path, (data, kind) in expected.items():
        out = outputs[path]
        assert out.key == f"sbx/tests/files/{path}"
        assert (out.size, out.sha256, out.content_type) == (
            len(data), hashlib.sha256(data).hexdigest(), kind,
        )  # fmt: skip
        assert await store.get(out.key) == data
        info = await store.stat(out.key)
        assert info is not None and info.content_type == kind


async def test_stdin_home_files_and_exit_code(backend: LocalSandboxBackend) -> None:
    spec = _spec(
        "stdin",
        _sh("cat; cat $HOME/.config/tool/settings.json; echo; pwd; exit 7"),
        home_files={".config/tool/settings.json": b'{"ok": true}'},
        stdin=b"from stdin\n",
    )
    lines, end = await _run(backend, spec)
    assert lines == ["from stdin", '{"ok": true}', "/workspace"]
    assert end.exit_code == 7 and not end.timed_out and not end.killed


async def test_unsafe_input_path_is_refused(backend: LocalSandboxBackend, runs_root: Path) -> None:
    before = set(os.listdir(runs_root))
    spec = _spec("unsafe", ["/bin/true"], inputs=[InputFile("../escape.txt", "sbx/x")])
    with pytest.raises(SandboxError, match="relative path"):
        await backend.start(spec)
    assert set(os.listdir(runs_root)) == before  # nothing left behind


async def test_destroy_removes_the_run_folder(
    backend: LocalSandboxBackend, runs_root: Path
) -> None:
    spec = _spec(
        "cleanup", _sh("mkdir -p locked/deep && echo x > locked/deep/f && chmod 000 locked")
    )
    sandbox = await backend.start(spec)
    assert (await sandbox.wait()).exit_code == 0
    folder = sandbox.run.root
    assert folder.parent == runs_root and folder.is_dir()
    await sandbox.destroy()
    await sandbox.destroy()  # idempotent
    assert not folder.exists()


# -- isolation ------------------------------------------------------------------------

PROBE = """
import json, os, socket, sys, urllib.request
out = {}
with urllib.request.urlopen(os.environ["GATEWAY"] + "/probe?n=7", timeout=10) as r:
    out["gateway"] = r.read().decode()
out["connect"] = {}
for target in json.loads(sys.argv[1]):
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        out["connect"][target] = "open"
    except OSError as exc:
        out["connect"][target] = type(exc).__name__
out["read"] = {}
for path in json.loads(sys.argv[2]):
    try:
        with open(path, "rb") as fh:
            fh.read(1)
        out["read"][path] = "read"
    except OSError as exc:
        out["read"][path] = type(exc).__name__
out["write"] = {}
for path in json.loads(sys.argv[3]):
    try:
        with open(path, "w") as fh:
            fh.write("x")
        out["write"][path] = "written"
    except OSError as exc:
        out["write"][path] = type(exc).__name__
# as exec'd (os.environ would show this Python's own locale coercion too)
with open("/proc/self/environ", "rb") as fh:
    out["env"] = dict(v.decode().split("=", 1) for v in fh.read().split(bytes(1)) if v)
print(json.dumps(out))
"""


def _host_address() -> str:
    """This machine's non-loopback address (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("192.0.2.1", 9))
        address: str = sock.getsockname()[0]
    assert not address.startswith("127."), "the machine has no non-loopback address"
    return address


def _reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=3).close()
        return True
    except OSError:
        return False


async def test_only_the_gateway_is_reachable_and_the_host_is_hidden(
    backend: LocalSandboxBackend,
    s3: EmbeddedObjectStore,
    nats_server: EmbeddedNats,
    pg_server: EmbeddedPostgres,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # A service on every address of the host, and a secret any host user may read:
    # only the sandbox's own walls keep them away.
    listener = socket.create_server(("0.0.0.0", 0))
    public_port = listener.getsockname()[1]
    secret_dir = traversable_tmpdir("jetty-sbx-secret-")
    secret = secret_dir / "secret.txt"
    secret.write_text("top secret")
    secret.chmod(0o644)
    monkeypatch.setenv("JETTY_S3_SECRET_KEY", "must-not-leak")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-leak")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-must-not-leak")
    try:
        host = _host_address()
        targets = [
            f"127.0.0.1:{nats_server.port}",
            f"127.0.0.1:{pg_server.port}",
            f"127.0.0.1:{s3.port}",
            f"127.0.0.1:{public_port}",
            f"{host}:{public_port}",
            f"{host}:{nats_server.port}",
        ]
        # From the host, the listener is there (so "unreachable" below means the sandbox).
        assert _reachable("127.0.0.1", nats_server.port)
        assert _reachable(host, public_port)
        reads = [str(ROOT / "pyproject.toml"), "/root/.bashrc", str(secret), "/etc/shadow"]
        writes = ["/usr/x", "/etc/x", "/x", "/opt/agents/x", "/run/jetty/x", "/var/x"]
        writes_ok = ["/workspace/x", "/home/agent/x", "/tmp/x"]
        argv = [
            "/usr/bin/python3", "-I", "-c", PROBE,
            json.dumps(targets), json.dumps(reads), json.dumps(writes + writes_ok),
        ]  # fmt: skip
        env = {"GATEWAY": backend.layout.gateway_url, "AGENT_SETTING": "1"}
        spec = _spec("isolation", argv, env=env)
        lines, end = await _run(backend, spec)
    finally:
        listener.close()
        shutil.rmtree(secret_dir)

    assert end.exit_code == 0, end.stderr_tail
    seen = json.loads(lines[-1])
    assert seen["gateway"] == f"{GATEWAY_REPLY} 7"
    assert seen["connect"] == {t: "ConnectionRefusedError" for t in targets[:4]} | {
        t: "OSError"
        for t in targets[4:]  # no route: the sandbox has loopback only
    }
    assert all(result != "read" for result in seen["read"].values()), seen["read"]
    assert all(seen["write"][p] != "written" for p in writes), seen["write"]
    assert all(seen["write"][p] == "written" for p in writes_ok), seen["write"]
    env = seen["env"]
    assert env["GATEWAY"] == backend.layout.gateway_url and env["AGENT_SETTING"] == "1"
    leaked = [k for k in env if k.startswith("JETTY_") or k.endswith("_API_KEY")]
    assert leaked == []
    # exactly the command's environment (+ HOME, PATH defaults, and bwrap's PWD)
    assert set(env) == {"GATEWAY", "AGENT_SETTING", "HOME", "PATH", "PWD"}


async def test_sandboxes_side_by_side(backend: LocalSandboxBackend) -> None:
    """Each sandbox has its own loopback (the same relay port) and its own files."""
    fetch = (
        'python3 -c "import urllib.request as u; '
        "print(u.urlopen('$GATEWAY/probe?n=$N').read().decode())\"; ls /workspace"
    )

    async def one(n: int) -> list[str]:
        spec = _spec(
            f"side-{n}", _sh(f"touch mine-{n}; {fetch}"),
            env={"GATEWAY": backend.layout.gateway_url, "N": str(n)},
        )  # fmt: skip
        lines, end = await _run(backend, spec)
        assert end.exit_code == 0, end.stderr_tail
        return lines

    results = await asyncio.gather(*(one(n) for n in range(3)))
    assert results == [[f"{GATEWAY_REPLY} {n}", f"mine-{n}"] for n in range(3)]


# -- limits and ends --------------------------------------------------------------------


async def test_timeout_kills_the_sandbox(backend: LocalSandboxBackend) -> None:
    spec = _spec("timeout", _sh("echo started; sleep 300"), limits=Limits(timeout_s=1))
    lines, end = await _run(backend, spec)
    assert lines == ["started"]
    assert end.timed_out and end.exit_code is None and not end.killed


async def test_kill_mid_run(backend: LocalSandboxBackend) -> None:
    sandbox: LocalSandbox = await backend.start(_spec("kill", _sh("echo ready; exec sleep 300")))
    try:
        lines = sandbox.lines()
        assert await anext(lines) == "ready"
        await sandbox.kill()
        end = await sandbox.wait()
        assert end.killed and end.exit_code is None and not end.timed_out
        assert [line async for line in lines] == []
        await sandbox.kill()  # idempotent
    finally:
        await sandbox.destroy()


FORKS = """
import os, time
children, error = [], None
for _ in range(200):
    try:
        pid = os.fork()
    except OSError as exc:
        error = type(exc).__name__
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    children.append(pid)
print(len(children), error)
"""


async def test_process_limit_holds(backend: LocalSandboxBackend) -> None:
    spec = _spec(
        "nproc",
        ["/usr/bin/python3", "-I", "-c", FORKS],
        limits=Limits(timeout_s=60, max_processes=16),
    )
    lines, end = await _run(backend, spec)
    assert end.exit_code == 0, end.stderr_tail
    started, error = lines[-1].split()
    assert error == "BlockingIOError"  # EAGAIN from fork
    assert int(started) < 16


async def test_file_size_limit_holds(backend: LocalSandboxBackend) -> None:
    spec = _spec(
        "fsize",
        _sh("dd if=/dev/zero of=big bs=64k count=64 2>/dev/null; echo rc=$?; stat -c %s big"),
        limits=Limits(timeout_s=60, max_file_mb=1),
    )
    sandbox = await backend.start(spec)
    try:
        lines = [line async for line in sandbox.lines()]
        assert (await sandbox.wait()).exit_code == 0
        outputs = await sandbox.collect_outputs()
    finally:
        await sandbox.destroy()
    assert lines[0] == "rc=153"  # 128 + SIGXFSZ: dd was stopped at the limit
    assert int(lines[1]) == 1024 * 1024
    assert [(o.path, o.size) for o in outputs] == [("big", 1024 * 1024)]


async def test_cpu_and_memory_limits_hold(backend: LocalSandboxBackend) -> None:
    hog = "try:\n    b = bytearray(512 * 1024 * 1024)\nexcept MemoryError:\n    print('no memory')"
    script = f"python3 -c \"{hog}\"; python3 -c 'while True: pass'; echo cpu rc=$?"
    limits = Limits(timeout_s=60, memory_mb=128, cpu_seconds=1)
    lines, end = await _run(backend, _spec("cpu-memory", _sh(script), limits=limits))
    assert end.exit_code == 0, end.stderr_tail
    assert lines == ["no memory", "cpu rc=152"]  # 128 + SIGXCPU


async def test_stderr_is_kept_as_a_bounded_tail(backend: LocalSandboxBackend) -> None:
    script = "head -c 100000 /dev/zero | tr '\\0' e >&2; echo THE-END >&2; exit 2"
    lines, end = await _run(backend, _spec("stderr", _sh(script)))
    bound = backend.settings.stderr_tail_bytes
    assert lines == [] and end.exit_code == 2
    assert end.stderr_tail == "e" * (bound - len("THE-END\n")) + "THE-END\n"


# -- the real agent CLIs -------------------------------------------------------------------


async def test_agent_clis_start_inside(backend: LocalSandboxBackend) -> None:
    bin_dir = f"{backend.layout.agents_dir}/node_modules/.bin"
    script = "; ".join(
        f'out=$({bin_dir}/{cli} --version 2>&1); echo "{cli} $? $out"'
        for cli in ("claude", "codex", "gemini")
    )
    lines, end = await _run(backend, _spec("clis", _sh(script)))
    assert end.exit_code == 0, end.stderr_tail
    versions = {line.split()[0]: line.split(maxsplit=2)[1:] for line in lines}
    package = json.loads((ROOT / "agents" / "package.json").read_text())["dependencies"]
    assert versions["claude"] == ["0", f"{package['@anthropic-ai/claude-code']} (Claude Code)"]
    assert versions["codex"] == ["0", f"codex-cli {package['@openai/codex']}"]
    assert versions["gemini"] == ["0", package["@google/gemini-cli"]]


# -- an unprivileged runner --------------------------------------------------------------

UNPRIVILEGED_RUN = """
import asyncio, json, os, sys
from pathlib import Path
sys.path[:0] = [os.environ["PROJECT"], os.environ["SITE_PACKAGES"]]
from services.runner.agents.base import AgentCommand
from services.runner.sandbox.base import InputFile, Limits, SandboxSpec
from services.runner.sandbox.local import LocalSandboxBackend, LocalSandboxSettings
from shared.objectstore import ObjectStore
from shared.settings import CommonSettings

SCRIPT = '''
cat in.txt
python3 -c "import urllib.request as u; print(u.urlopen('$GATEWAY/probe?n=9').read().decode())"
mkdir -p locked/inner && echo hidden > locked/inner/secret.txt
chmod 000 locked/inner/secret.txt locked/inner && chmod 500 locked
'''

async def main():
    root = Path(os.environ["RUNS"])
    settings = LocalSandboxSettings(
        root=root, agents_dir=Path(os.environ["AGENTS"]),
        gateway_host="127.0.0.1", gateway_port=int(os.environ["GATEWAY_PORT"]),
    )
    backend = LocalSandboxBackend(settings, ObjectStore.from_settings(CommonSettings()))
    spec = SandboxSpec(
        "unprivileged", "sbx", "tests",
        AgentCommand(["/bin/sh", "-c", SCRIPT], {"GATEWAY": backend.layout.gateway_url}),
        [InputFile("in.txt", "sbx/uploads/unprivileged.txt")], Limits(timeout_s=60),
        "sbx/tests/unprivileged/",
    )
    sandbox = await backend.start(spec)
    lines = [line async for line in sandbox.lines()]
    end = await sandbox.wait()
    outputs = await sandbox.collect_outputs()
    await sandbox.destroy()
    await backend.close()
    print(json.dumps({
        "uid": os.getuid(), "lines": lines, "exit": end.exit_code, "stderr": end.stderr_tail,
        "outputs": [[o.path, o.size] for o in outputs], "left": os.listdir(root),
    }))

asyncio.run(main())
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="the whole module already runs unprivileged")
async def test_an_unprivileged_runner(
    store: ObjectStore, s3: EmbeddedObjectStore, gateway: int
) -> None:
    """The backend run by a non-root user (here: nobody, through the system's
    Python 3.11 and our packages): the sandbox's user is then the runner's own."""
    nobody = 65534
    await _put(store, "sbx/uploads/unprivileged.txt", b"input for nobody\n")
    runs = traversable_tmpdir("jetty-sbx-nobody-")
    os.chown(runs, nobody, nobody)
    site_packages = next((ROOT / ".venv" / "lib").glob("python3.*/site-packages"))
    env = {
        "PATH": "/usr/bin:/bin",
        "PROJECT": str(ROOT),
        "SITE_PACKAGES": str(site_packages),
        "RUNS": str(runs),
        "AGENTS": str(AGENTS),
        "GATEWAY_PORT": str(gateway),
        "JETTY_S3_ENDPOINT": s3.endpoint,
        "JETTY_S3_ACCESS_KEY": s3.access_key,
        "JETTY_S3_SECRET_KEY": s3.secret_key,
    }
    try:
        child = await asyncio.create_subprocess_exec(
            "/usr/bin/python3", "-I", "-c", UNPRIVILEGED_RUN,
            env=env, cwd="/", user=nobody, group=nobody, extra_groups=[],
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await child.communicate()
    finally:
        shutil.rmtree(runs)
    assert child.returncode == 0, err.decode()
    seen = json.loads(out)
    assert seen["uid"] == nobody
    assert seen["exit"] == 0, seen["stderr"]
    assert seen["lines"] == ["input for nobody", f"{GATEWAY_REPLY} 9"]
    assert seen["outputs"] == [["locked/inner/secret.txt", 7]]
    assert seen["left"] == ["bwrap"]  # the read-only folders were removed too (the link stays)
