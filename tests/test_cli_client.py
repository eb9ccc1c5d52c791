"""The client side of the ``jetty`` command against a real stack: upload, run a
runbook (claude-code in the sandbox, its model a scripted fake) with its artifact
downloaded, trajectories ls/show/tail, events tail from NATS, and errors that are
one line and a non-zero exit, never a traceback."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jetty_cli.testing import TestStack, hermetic_env
from tests.runbook_support import (  # the stack and fakes of the runbook tests
    AGENTS,
    MESSAGES,
    Fakes,
    csv_for,
    fake,
    fakes,
    runbooks,
)

pytestmark = pytest.mark.timeout(300)
__all__ = ["fake", "fakes", "runbooks"]

CLAUDE = AGENTS[0]


async def jetty(
    stack: TestStack, *args: str, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run the command; async, so the fakes (on this event loop) keep answering."""
    environ = hermetic_env() | {
        "JETTY_URL": stack.base_url,
        "JETTY_API_TOKEN": stack.token,
        "JETTY_HOME": str(cwd or Path.cwd()),  # no running stack there
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "jetty_cli", *args,
        env=environ | env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 240)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(list(args), proc.returncode, out.decode(), err.decode())


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jetty: "), result.stderr
    return lines[0]


async def test_run_uploads_streams_and_downloads_the_artifacts(
    runbooks: TestStack, fake: Fakes, tmp_path: Path
) -> None:
    data, expected = csv_for(CLAUDE)
    (tmp_path / "data.csv").write_bytes(data)
    (tmp_path / "RUNBOOK.md").write_text(MESSAGES[0]["content"])
    fake.script(CLAUDE)
    result = await jetty(
        runbooks,
        "run", "--agent", "claude-code", "--runbook", "RUNBOOK.md", "--file", "data.csv",
        "--model", CLAUDE.model, "--task", "cli-run", "--out", "out", "--json",
        MESSAGES[1]["content"],
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    final: dict[str, Any] = json.loads(result.stdout)
    assert final["status"] == "completed" and final["task"] == "cli-run"
    assert final["usage"]["total_tokens"] > 0
    downloaded = {d["path"]: d for d in final["downloaded"]}
    summary = tmp_path / "out" / "results" / "summary.md"
    assert downloaded["results/summary.md"]["file"] == str(Path("out/results/summary.md"))
    assert summary.read_text().strip() == expected.strip()
    trajectory_id = final["trajectory_id"]

    # The trajectory as the other commands show it.
    listed = json.loads(
        (await jetty(runbooks, "trajectories", "ls", "--task", "cli-run", "--json")).stdout
    )
    assert trajectory_id in [row["trajectory_id"] for row in listed["data"]]
    shown = await jetty(runbooks, "trajectories", "show", trajectory_id)
    assert shown.returncode == 0 and trajectory_id in shown.stdout
    assert "completed" in shown.stdout and "results/summary.md" in shown.stdout
    # A finished run tails to its end at once, with its status as the exit code.
    tailed = await jetty(runbooks, "trajectories", "tail", trajectory_id, "--json")
    assert tailed.returncode == 0, tailed.stderr
    assert json.loads(tailed.stdout)["status"] == "completed"

    # The run's events, straight from the bus.
    events = await jetty(
        runbooks,
        "events", "tail", "--since", "10m", "--type", "runbook.*", "--no-follow",
        "--json", "--nats", runbooks.nats_url,
    )  # fmt: skip
    assert events.returncode == 0, events.stderr
    mine = [
        e
        for e in map(json.loads, events.stdout.splitlines())
        if e["trajectory_id"] == trajectory_id
    ]
    types = [e["type"] for e in mine]
    assert types[0] == "runbook.requested" and "runbook.completed" in types


async def test_upload_prints_the_path_for_file_paths(runbooks: TestStack, tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("x\n1\n")
    (tmp_path / "b.txt").write_bytes(os.urandom(3 * 1024 * 1024))
    result = await jetty(runbooks, "upload", "a.csv", "b.txt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["uploads/a.csv", "uploads/b.txt"]


async def test_a_failed_run_exits_non_zero(runbooks: TestStack, tmp_path: Path) -> None:
    (tmp_path / "RUNBOOK.md").write_text("Do it.")
    result = await jetty(
        runbooks, "run", "--agent", "claude-code", "--runbook", "RUNBOOK.md", "--model",
        "mock/echo", "--timeout", "1", "--json", cwd=tmp_path,
    )  # fmt: skip
    # mock/echo answers at once: the run completes, or its 1 s limit fails it;
    # either way the exit code says which.
    final = json.loads(result.stdout)
    assert result.returncode == (0 if final["status"] == "completed" else 1)


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (("trajectories", "show", "tr_missing"), {}, "HTTP 404 (not_found)"),
        (("trajectories", "ls"), {"JETTY_API_TOKEN": "jt_wrong"}, "HTTP 401"),
        (("trajectories", "ls"), {"JETTY_URL": "http://127.0.0.1:9"}, "cannot reach"),
        (("upload", "no-such.csv"), {}, "no-such.csv: no such file"),
        (("run", "--agent", "nope", "--runbook", "R.md"), {}, "jetty.agent"),
        (("run", "--agent", "codex", "--runbook", "missing.md"), {}, "missing.md"),
        (("events", "tail", "--since", "yesterday"), {"JETTY_NATS_URL": "nats://x:1"}, "--since"),
        (("events", "tail"), {"JETTY_NATS_URL": "nats://127.0.0.1:9"}, "cannot reach NATS"),
    ],
)
async def test_errors_are_one_line(
    runbooks: TestStack, tmp_path: Path, args: tuple[str, ...], env: dict[str, str], expected: str
) -> None:
    (tmp_path / "R.md").write_text("runbook")
    line = one_line_error(await jetty(runbooks, *args, cwd=tmp_path, **env))
    assert expected in line
