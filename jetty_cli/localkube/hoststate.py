"""What the local cluster could change on the machine, read before it starts and
compared after it stops: kernel settings the kubelet likes to write, iptables
chains, mounts, network links, cgroups, well-known state folders, processes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

# What the kubelet sets by default (see deploy/k8s/local/patch_kubelet.py) and
# what a bridge CNI would set.
SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/ip_forward",
    "net/bridge/bridge-nf-call-iptables",
)
# Folders a kubelet or containerd creates by default when not told otherwise.
PATHS = (
    "/var/lib/kubelet",
    "/var/lib/containerd",
    "/run/containerd",
    "/opt/containerd",
    "/etc/cni/net.d",
    "/opt/cni",
    "/run/netns",
    "/etc/kubernetes",
    "/usr/libexec/kubernetes",
    "/var/log/pods",
    "/var/log/containers",
)
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _sysctls() -> dict[str, str]:
    values = {}
    for name in SYSCTLS:
        path = Path("/proc/sys") / name
        values[name] = path.read_text().strip() if path.exists() else "<absent>"
    return values


def _iptables_chains() -> list[str]:
    chains: list[str] = []
    for table in ("filter", "nat", "mangle", "raw"):
        try:
            out = subprocess.run(
                ["iptables-save", "-t", table],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            return ["<iptables-save unavailable>"]
        chains += [
            f"{table}:{line[1:].split()[0]}" for line in out.splitlines() if line.startswith(":")
        ]
        chains += [f"{table}:{line}" for line in out.splitlines() if line.startswith("-A")]
    return sorted(chains)


def _mounts() -> list[str]:
    """Mount points a cluster could leave (others' sandboxes mount elsewhere)."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    points = {line.split()[4] for line in lines}
    return sorted(
        p for p in points if any(w in p for w in ("k8s", "kubelet", "containerd", "netns"))
    )


def _cgroups() -> list[str]:
    found = []
    if CGROUP_ROOT.is_dir():
        for controller in sorted(CGROUP_ROOT.iterdir()):
            if controller.is_dir() and not controller.is_symlink():
                found += [
                    f"{controller.name}/{d.name}"
                    for d in controller.iterdir()
                    if d.is_dir() and d.name.startswith(("kubepods", "kubelet", "system.slice"))
                ]
    return sorted(found)


def snapshot() -> dict[str, Any]:
    return {
        "sysctls": _sysctls(),
        "iptables": _iptables_chains(),
        "mounts": _mounts(),
        "links": sorted(os.listdir("/sys/class/net")),
        "cgroups": _cgroups(),
        "paths": {p: os.path.lexists(p) for p in PATHS},
        "var_log_pods": sorted(os.listdir("/var/log/pods"))
        if os.path.isdir("/var/log/pods")
        else None,
        "var_log_containers": (
            sorted(os.listdir("/var/log/containers"))
            if os.path.isdir("/var/log/containers")
            else None
        ),
    }


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What changed, one line each (empty: the machine is as it was)."""
    out = []
    for key, old in before.items():
        new = after.get(key)
        if old == new:
            continue
        if isinstance(old, list) and isinstance(new, list):
            added = sorted(set(new) - set(old))
            removed = sorted(set(old) - set(new))
            out.append(f"{key}: added {added[:10]} removed {removed[:10]}")
        elif isinstance(old, dict) and isinstance(new, dict):
            out += [f"{key} {k}: {old.get(k)} -> {new.get(k)}" for k in old if old[k] != new.get(k)]
        else:
            out.append(f"{key}: {json.dumps(old)} -> {json.dumps(new)}")
    return out
