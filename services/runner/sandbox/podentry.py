"""What a Kubernetes sandbox pod runs (standard library only: it ships alone in
the sandbox image as ``/opt/jetty/podentry.py``).

1. Reads the run's config (``$JETTY_POD_CONFIG``, the per-run Secret): the agent's
   argv, environment, ``$HOME`` files, stdin, the inputs' presigned GET URLs, one
   presigned PUT URL for the outputs, the wall-clock limit and rlimits.
2. Downloads each input into the workspace and notes its sha256.
3. Runs the agent in the workspace with only the given environment, under the
   rlimits, killing its process group past the time limit or on SIGTERM.
4. Packs every regular file of the workspace that is new or changed into one
   ``tar.gz`` and PUTs it to the presigned URL (the runner unpacks and checks it:
   file names unknown in advance cannot have presigned URLs of their own).
5. Writes a JSON summary to the termination log (Kubernetes shows it in the
   container's status) and exits with the agent's exit code.

Log protocol (stdout; the pod log interleaves stdout and stderr, so every line
says what it is): ``o <line>`` an agent stdout line verbatim, ``e <line>`` an agent
stderr line, ``p <text>`` a message of this script. Anything else is not ours.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import tarfile
import threading
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

CONFIG_VERSION = 1
#: exit code when this script (not the agent) failed: inputs, outputs, config
SETUP_FAILED = 125
#: the termination message is cut by Kubernetes at 4096 bytes
MESSAGE_LIMIT = 4000
HTTP_TIMEOUT = 60.0
_CHUNK = 1024 * 1024

_out_lock = threading.Lock()


class PodEntryError(Exception):
    pass


def emit(kind: str, text: str, out: TextIO | None = None) -> None:
    stream = out or sys.stdout
    with _out_lock:
        stream.write(f"{kind} {text}\n")
        stream.flush()


def safe_relative(path: str) -> PurePosixPath:
    """``path`` as a relative path that stays inside its root, or an error."""
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or any(part in ("..", "") for part in pure.parts):
        raise PodEntryError(f"refused path {path!r}")
    if any(ord(c) < 32 for c in path):
        raise PodEntryError(f"refused path {path!r}")
    return pure


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path) -> str:
    """GET ``url`` into ``dest``; its sha256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response, dest.open("wb") as fh:
        while chunk := response.read(_CHUNK):
            digest.update(chunk)
            fh.write(chunk)
    return digest.hexdigest()


def upload(url: str, source: Path) -> None:
    size = source.stat().st_size
    with source.open("rb") as fh:
        request = urllib.request.Request(
            url,
            data=fh,
            method="PUT",
            headers={"Content-Length": str(size), "Content-Type": "application/gzip"},
        )
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            response.read()


def changed_files(workspace: Path, inputs: dict[str, str]) -> list[str]:
    """Regular files under ``workspace`` that are not an unchanged input
    (symlinks and special files are never outputs)."""
    found: list[str] = []
    for root, dirs, files in os.walk(workspace, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            full = Path(root) / name
            if full.is_symlink() or not full.is_file():
                continue
            rel = full.relative_to(workspace).as_posix()
            if inputs.get(rel) == sha256_file(full):
                continue
            found.append(rel)
    return found


def pack(workspace: Path, paths: list[str], archive: Path) -> None:
    with tarfile.open(archive, "w:gz") as tar:
        for rel in paths:
            info = tar.gettarinfo(str(workspace / rel), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with (workspace / rel).open("rb") as fh:
                tar.addfile(info, fh)


def _limits(limits: dict[str, Any]) -> None:
    """Runs in the agent's child before exec."""
    if limits.get("max_processes"):
        n = int(limits["max_processes"])
        resource.setrlimit(resource.RLIMIT_NPROC, (n, n))
    if limits.get("cpu_seconds"):
        n = int(limits["cpu_seconds"])
        resource.setrlimit(resource.RLIMIT_CPU, (n, n))
    if limits.get("max_file_mb"):
        n = int(limits["max_file_mb"]) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (n, n))


class Agent:
    """The agent's process: lines relayed, a tail of stderr kept, killed on time."""

    def __init__(self, config: dict[str, Any], workspace: Path) -> None:
        self.timed_out = False
        self.killed = False
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        stdin = config.get("stdin")
        self._stdin = base64.b64decode(stdin) if stdin else None
        limits = dict(config.get("limits") or {})
        self.proc = subprocess.Popen(
            [str(a) for a in config["argv"]],
            env={str(k): str(v) for k, v in (config.get("env") or {}).items()},
            cwd=workspace,
            stdin=subprocess.PIPE if self._stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=lambda: _limits(limits),  # noqa: PLW1509 (no threads touch it yet)
        )
        self._timer = threading.Timer(float(config["timeout_s"]), self._timeout)
        self._timer.daemon = True

    def _timeout(self) -> None:
        self.timed_out = True
        self.kill()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def _feed_stdin(self) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(self._stdin or b"")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass

    def _relay_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.stderr_tail.append(line)
            emit("e", line)

    def run(self) -> int:
        self._timer.start()
        helpers = [threading.Thread(target=self._relay_stderr, daemon=True)]
        if self._stdin is not None:
            helpers.append(threading.Thread(target=self._feed_stdin, daemon=True))
        for thread in helpers:
            thread.start()
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            emit("o", raw.decode("utf-8", "replace").rstrip("\r\n"))
        code = self.proc.wait()
        self._timer.cancel()
        for thread in helpers:
            thread.join(5)
        return code


def write_summary(path: str | None, summary: dict[str, Any]) -> None:
    if not path:
        return
    tail = str(summary.get("stderr_tail", ""))
    while True:
        text = json.dumps(summary)
        if len(text.encode()) <= MESSAGE_LIMIT or not tail:
            break
        tail = tail[len(tail) // 4 + 1 :]
        summary["stderr_tail"] = tail
    try:
        Path(path).write_text(text)
    except OSError as exc:
        emit("p", f"cannot write the termination log: {exc}")


def prepare(config: dict[str, Any], workspace: Path, home: Path) -> dict[str, str]:
    """``$HOME`` files and inputs in place; the inputs' sha256 by path."""
    if config.get("v") != CONFIG_VERSION:
        raise PodEntryError(f"unknown config version {config.get('v')!r}")
    for rel, b64 in (config.get("home_files") or {}).items():
        dest = home / safe_relative(rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(base64.b64decode(b64))
    hashes: dict[str, str] = {}
    for item in config.get("inputs") or []:
        rel = safe_relative(str(item["path"]))
        try:
            hashes[rel.as_posix()] = download(str(item["url"]), workspace / rel)
        except OSError as exc:
            raise PodEntryError(f"input {rel} could not be downloaded: {exc}") from exc
    emit("p", f"{len(hashes)} input(s) in place")
    return hashes


def deliver(config: dict[str, Any], workspace: Path, tmp: Path, inputs: dict[str, str]) -> int:
    """Pack and upload the outputs; how many files."""
    output = config.get("output") or {}
    if not output.get("url"):
        return 0
    paths = changed_files(workspace, inputs)
    archive = tmp / "jetty-outputs.tar.gz"
    pack(workspace, paths, archive)
    limit = int(output.get("max_bytes") or 0)
    if limit and archive.stat().st_size > limit:
        raise PodEntryError(f"outputs archive larger than {limit} bytes")
    try:
        upload(str(output["url"]), archive)
    except OSError as exc:
        raise PodEntryError(f"outputs could not be uploaded: {exc}") from exc
    finally:
        archive.unlink(missing_ok=True)
    emit("p", f"{len(paths)} output file(s) uploaded")
    return len(paths)


def main() -> int:
    env = os.environ
    termination = env.get("JETTY_POD_TERMINATION_LOG")
    workspace = Path(env.get("JETTY_POD_WORKSPACE", "/workspace"))
    home = Path(env.get("JETTY_POD_HOME", "/home/agent"))
    tmp = Path(env.get("JETTY_POD_TMP", "/tmp"))
    summary: dict[str, Any] = {"exit_code": None, "timed_out": False, "outputs": 0}
    agent: Agent | None = None

    def on_term(_signum: int, _frame: object) -> None:
        # The Job was deleted (cancel): stop the agent; the main loop then ends.
        if agent is not None:
            agent.killed = True
            agent.kill()

    signal.signal(signal.SIGTERM, on_term)
    try:
        config = json.loads(Path(env.get("JETTY_POD_CONFIG", "/run/jetty/run.json")).read_text())
        inputs = prepare(config, workspace, home)
        agent = Agent(config, workspace)
        code = agent.run()
        summary.update(
            exit_code=code,
            timed_out=agent.timed_out,
            killed=agent.killed,
            stderr_tail="\n".join(agent.stderr_tail),
        )
        if agent.killed:
            return 143
        summary["outputs"] = deliver(config, workspace, tmp, inputs)
        emit("p", f"agent exited with {code}" + (" (timed out)" if agent.timed_out else ""))
        return code if code >= 0 else 128 - code
    except (PodEntryError, OSError, ValueError, KeyError) as exc:
        summary["error"] = str(exc)
        emit("p", f"error: {exc}")
        return SETUP_FAILED
    finally:
        write_summary(termination, summary)


if __name__ == "__main__":
    sys.exit(main())
