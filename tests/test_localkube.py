"""The local cluster's guards that need no cluster: who may run the tier, and how
a changed machine is reported (the tier itself: tests/test_k8s_jobs.py)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from jetty_cli.localkube import hoststate
from jetty_cli.localkube.cluster import REPO, cannot_run_reason

SYSTEM_PYTHON = "/usr/bin/python3"  # the venv's interpreter may sit under /root


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("runuser") or not os.path.exists(SYSTEM_PYTHON),
    reason="needs root, runuser and a system python3",
)
def test_the_tier_names_why_it_cannot_run_for_a_normal_user() -> None:
    code = "from jetty_cli.localkube.cluster import REPO, cannot_run_reason as r; print(r())"
    out = subprocess.run(
        [str(shutil.which("runuser")), "-u", "nobody", "--", SYSTEM_PYTHON, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=str(REPO),
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
        timeout=60,
    ).stdout.strip()
    assert out == "not root (the kubelet and containerd need root)"
    assert cannot_run_reason() is None or not os.path.exists("/etc/debian_version")


def test_a_changed_machine_is_reported_line_by_line() -> None:
    before = hoststate.snapshot()
    assert hoststate.differences(before, before) == []
    after = {
        **before,
        "sysctls": {**before["sysctls"], "kernel/panic_on_oops": "1-changed"},
        "iptables": [*before["iptables"], "filter:KUBE-FIREWALL"],
        "paths": {**before["paths"], "/var/lib/kubelet": True},
    }
    lines = hoststate.differences(before, after)
    assert any(line.startswith("sysctls kernel/panic_on_oops:") for line in lines)
    assert any("KUBE-FIREWALL" in line for line in lines)
    assert any(line.startswith("paths /var/lib/kubelet:") for line in lines)
