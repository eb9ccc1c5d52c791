"""The seccomp filter of a ``local`` sandbox (``bwrap --seccomp FD``).

What a process in the sandbox may not do, whatever it is (the agent, a tool it
runs, something a tool downloaded): look into or steer another process
(``ptrace``, ``pidfd_getfd``, ``process_vm_readv``/``writev``, ``kcmp``), make
namespaces (``unshare``, ``setns``, ``clone`` with a ``CLONE_NEW*`` flag) or
mounts, load BPF, open perf events, use the kernel keyrings, ``userfaultfd``,
``io_uring``, and the host-administration calls (modules, reboot, swap, clock,
quotas, ``kexec``, ``acct``, handles by inode). Each is answered ``EPERM``;
``clone3`` is answered ``ENOSYS``, since its flags live in memory a filter cannot
read — the C library then falls back to ``clone``, whose flags it can.

The filter is compiled by libseccomp (the classic-BPF program bwrap loads); its
Python binding is Debian's ``python3-seccomp``, so the compiling runs in the
system's ``python3`` (the project's own interpreter may be another build), once
per runner. Without libseccomp no sandbox starts: the record of a run would not
be worth much.
"""

from __future__ import annotations

import subprocess

from services.runner.sandbox.base import SandboxError

SYSTEM_PYTHON = "/usr/bin/python3"

#: answered EPERM (names unknown on this architecture are skipped)
DENIED = (
    # other processes
    "ptrace", "pidfd_getfd", "process_vm_readv", "process_vm_writev", "kcmp",
    "process_madvise",
    # namespaces and mounts
    "unshare", "setns", "mount", "umount", "umount2", "pivot_root", "chroot", "move_mount",
    "open_tree", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    # kernel facilities a coding agent has no use for
    "bpf", "perf_event_open", "keyctl", "add_key", "request_key", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "fanotify_init",
    "name_to_handle_at", "open_by_handle_at", "lookup_dcookie",
    # the host's administration
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "reboot", "swapon", "swapoff", "syslog", "acct", "quotactl", "quotactl_fd",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "iopl", "ioperm",
    "vhangup", "nfsservctl",
)  # fmt: skip
#: answered ENOSYS
UNSUPPORTED = ("clone3",)
#: clone() flags that make a namespace (CLONE_NEWTIME, NEWNS, NEWCGROUP, NEWUTS,
#: NEWIPC, NEWUSER, NEWPID, NEWNET)
CLONE_NAMESPACE_FLAGS = (
    0x00000080, 0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000,
    0x40000000,
)  # fmt: skip

# Run by the system python3: the filter's BPF program on stdout.
_COMPILE = """
import errno, sys, seccomp
denied, unsupported, flags = {denied!r}, {unsupported!r}, {flags!r}
f = seccomp.SyscallFilter(seccomp.ALLOW)
def rule(action, name, *args):
    try:
        f.add_rule(action, name, *args)
    except (RuntimeError, ValueError):  # not a system call of this architecture
        pass
for name in denied:
    rule(seccomp.ERRNO(errno.EPERM), name)
for name in unsupported:
    rule(seccomp.ERRNO(errno.ENOSYS), name)
for flag in flags:
    rule(seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
f.export_bpf(sys.stdout.buffer)
"""


def compile_filter(python: str = SYSTEM_PYTHON) -> bytes:
    """The filter as the BPF program ``bwrap --seccomp`` reads."""
    script = _COMPILE.format(denied=DENIED, unsupported=UNSUPPORTED, flags=CLONE_NAMESPACE_FLAGS)
    try:
        done = subprocess.run(
            [python, "-I", "-c", script], capture_output=True, timeout=30, check=False
        )
    except OSError as exc:
        raise SandboxError(f"cannot compile the seccomp filter: {exc}") from exc
    if done.returncode != 0 or not done.stdout:
        detail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        raise SandboxError(
            "cannot compile the seccomp filter (is Debian's python3-seccomp installed?): "
            + detail[0]
        )
    return done.stdout
