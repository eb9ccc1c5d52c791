"""``examples/subscriber.py`` against a real stack: it receives a finished
completion through its durable consumer, carries on where it stopped, and skips
events it has already handled when they are delivered again."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from jetty_cli.testing import TestStack, call

SUBSCRIBER = Path(__file__).resolve().parents[1] / "examples" / "subscriber.py"


def subscribe(stack: TestStack, durable: str, state: Path) -> subprocess.CompletedProcess[str]:
    since = (datetime.now(UTC) - timedelta(minutes=10)).isoformat()
    return subprocess.run(
        [
            sys.executable, str(SUBSCRIBER), "--nats", stack.nats_url, "--durable", durable,
            "--since", since, "--state", str(state), "--exit-when-idle", "2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip


def test_the_subscriber_handles_each_event_once(stack: TestStack, tmp_path: Path) -> None:
    body = {
        "model": "mock/echo",
        "messages": [{"role": "user", "content": "for the subscriber"}],
        "jetty": {"task": "example-subscriber"},
    }
    status, _, completion = call(stack.base_url + "/v1/chat/completions", stack.token, body)
    assert status == 200
    trajectory_id = completion["jetty_metadata"]["trajectory_id"]
    state = tmp_path / "state.sqlite"

    first = subscribe(stack, "example-a", state)
    assert first.returncode == 0, first.stderr
    [line] = [x for x in first.stdout.splitlines() if trajectory_id in x]
    assert "completion.finished" in line and "task=example-subscriber" in line

    # The same durable again: it starts where it stopped, so nothing is repeated.
    again = subscribe(stack, "example-a", state)
    assert again.returncode == 0, again.stderr
    assert trajectory_id not in again.stdout

    # A new durable delivers the same events again; the handled ids make it a no-op.
    replayed = subscribe(stack, "example-b", state)
    assert replayed.returncode == 0, replayed.stderr
    assert trajectory_id not in replayed.stdout
    assert "skipped a redelivered event" in replayed.stderr
