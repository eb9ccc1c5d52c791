"""The README's ``jetty`` command examples, run as written against a real stack
(``tests/test_readme.py`` runs the curl, Python and JavaScript ones)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from jetty_cli.testing import TestStack
from tests.test_readme import _blocks

ROOT = Path(__file__).resolve().parents[1]


def test_the_cli_quick_start_runs(stack: TestStack, tmp_path: Path) -> None:
    [script] = [b for b in _blocks("sh") if "jetty run" in b]
    env = {
        **os.environ,
        "JETTY_URL": stack.base_url,
        "JETTY_API_TOKEN": stack.token,
        "JETTY_NATS_URL": stack.nats_url,
        "JETTY_HOME": str(tmp_path),  # not the checkout's stack
    }
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script.replace("/tmp/", f"{tmp_path}/")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "completed" in result.stdout
    assert "runbook.completed" in result.stdout  # from events tail
