"""The bubblewrap command line of a ``local`` sandbox (a pure function of the run).

What the agent gets:

* a root built from pieces: the parts of ``/usr`` the agents and their tools use,
  read-only (never ``/usr/local``, ``/usr/src``: what the host added), ``/bin`` ``/lib`` ``/lib64``
  ``/sbin`` as on the host (symlinks into ``/usr`` on Debian), a handful of
  ``/etc`` files the CLIs need (TLS roots, name service, time zone, the linker
  cache) and a ``passwd``/``group`` naming only the sandbox's user — never the
  whole ``/etc``, the host's home folders, ``/work``, the project or its data;
* a private ``/tmp`` (on the run's own size-limited filesystem, or a tmpfs of
  an explicit size), ``/dev`` with a size-limited ``/dev/shm``, and ``/proc``
  (own pid namespace);
* ``/workspace`` and ``/home/agent`` read-write, the agents' ``node_modules``
  read-only at ``/opt/agents``, the relay's socket at ``/run/jetty`` and the
  launcher at ``/opt/jetty`` read-only;
* every namespace unshared (so the network is loopback only), no further user
  namespace inside, the seccomp filter of :mod:`.seccomp`, a new session
  (no terminal to push input into), killed with its parent, uid/gid 1000,
  an environment that is exactly the command's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.runner.sandbox.base import Limits

WORKSPACE = "/workspace"
HOME = "/home/agent"
AGENTS = "/opt/agents"
JETTY = "/run/jetty"
SOCKET = f"{JETTY}/gw.sock"
LAUNCHER = "/opt/jetty/inner_relay.py"
UID = GID = 1000
PYTHON = "/usr/bin/python3"

#: what of the host's /etc is visible (those that exist)
ETC = (
    "alternatives", "ca-certificates", "gai.conf", "host.conf", "hosts", "ld.so.cache",
    "ld.so.conf", "ld.so.conf.d", "localtime", "mime.types", "nsswitch.conf",
    "os-release", "protocols", "resolv.conf", "services", "ssl", "timezone",
)  # fmt: skip
#: top-level folders that Debian makes symlinks into /usr ("merged /usr")
USR_LINKS = ("bin", "lib", "lib32", "lib64", "libx32", "sbin")
#: what of /usr is visible (those that exist): the distribution's programs,
#: libraries and data; not /usr/local or /usr/src (what the host added)
USR = ("bin", "sbin", "lib", "lib32", "lib64", "libx32", "libexec", "share", "include")

PASSWD = (
    f"agent:x:{UID}:{GID}:agent:{HOME}:/bin/sh\n"
    "nobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n"
)
GROUP = f"agent:x:{GID}:\nnogroup:x:65534:\n"
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True, slots=True)
class Mounts:
    """What the sandbox gets: host folders by path (bwrap resolves even a
    descriptor's ``/proc/self/fd`` link back to a path, so the sandbox's host
    user must be able to pass through the folders above them either way), small
    files as data descriptors (memfd), copied in read-only."""

    workspace: Path
    home: Path
    #: the folder of the relay's socket
    jetty: Path
    agents: Path
    #: the run's /tmp on its own filesystem; None: a tmpfs of ``tmp_bytes``
    tmp: Path | None
    tmp_bytes: int
    shm_bytes: int
    #: the compiled seccomp filter (:mod:`.seccomp`)
    seccomp: int
    passwd: int
    group: int
    launcher: int


def root_pieces(host_root: str = "/") -> list[str]:
    args = []
    for name in USR:
        if os.path.isdir(os.path.join(host_root, "usr", name)):
            args += ["--ro-bind", f"/usr/{name}", f"/usr/{name}"]
    for name in USR_LINKS:
        path = os.path.join(host_root, name)
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), f"/{name}"]
        elif os.path.isdir(path):
            args += ["--ro-bind", f"/{name}", f"/{name}"]
    for name in ETC:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    return args


def environment(env: Mapping[str, str]) -> dict[str, str]:
    """The command's environment, with HOME and PATH filled in if it left them out."""
    return {"HOME": HOME, "PATH": DEFAULT_PATH, **env}


def limit_args(limits: Limits) -> list[str]:
    mib = 1024 * 1024
    args = [
        "--nproc", str(limits.max_processes),
        "--fsize", str(limits.max_file_mb * mib),
        # RLIMIT_DATA, not RLIMIT_AS: node reserves ~10 GB of address space per
        # WebAssembly memory (gemini-cli fails under any sane AS limit), while the
        # data limit counts only memory that can actually be written.
        "--data", str(limits.memory_mb * mib),
        "--nofile", str(limits.max_open_files),
    ]  # fmt: skip
    if limits.cpu_seconds is not None:
        args += ["--cpu", str(limits.cpu_seconds)]
    return args


def options(mounts: Mounts, env: Mapping[str, str]) -> list[str]:
    """bwrap's options (it reads them NUL-separated from ``--args FD``, so the
    token in the environment never shows in ``ps``)."""
    args = [
        # A user namespace of its own in which no further one can be made (what
        # `unshare -Urm` would need), and the seccomp filter over everything.
        "--unshare-all", "--unshare-user", "--disable-userns", "--seccomp", str(mounts.seccomp),
        "--die-with-parent", "--new-session",
        "--uid", str(UID), "--gid", str(GID), "--hostname", "sandbox",
        *root_pieces(),
        "--ro-bind-data", str(mounts.passwd), "/etc/passwd",
        "--ro-bind-data", str(mounts.group), "/etc/group",
        "--ro-bind-data", str(mounts.launcher), LAUNCHER,
        *(
            ["--bind", str(mounts.tmp), "/tmp"]
            if mounts.tmp is not None
            else ["--size", str(mounts.tmp_bytes), "--tmpfs", "/tmp"]
        ),
        "--dev", "/dev",
        "--size", str(mounts.shm_bytes), "--tmpfs", "/dev/shm",
        "--proc", "/proc",
        "--bind", str(mounts.workspace), WORKSPACE,
        "--bind", str(mounts.home), HOME,
        "--ro-bind", str(mounts.agents), AGENTS,
        "--ro-bind", str(mounts.jetty), JETTY,
        "--remount-ro", "/",
        "--clearenv",
    ]  # fmt: skip
    for key, value in environment(env).items():
        args += ["--setenv", key, value]
    return [*args, "--chdir", WORKSPACE]


def command(
    argv: Sequence[str], env: Mapping[str, str], limits: Limits, inner_port: int
) -> list[str]:
    """What bwrap runs: the launcher (relay, limits), which then execs ``argv``.
    (bwrap wants the command on its real command line, after the options.)"""
    launcher = [PYTHON, "-I", "-S", LAUNCHER, "--port", str(inner_port), "--socket", SOCKET]
    if "LC_CTYPE" not in env:
        launcher += ["--unset-ctype", "1"]
    return [*launcher, *limit_args(limits), "--", *argv]
