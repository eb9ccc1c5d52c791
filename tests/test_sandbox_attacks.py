"""The sandbox under attack: each finding of the probe, run again the way the probe
ran it — from inside a real claude-code runbook, the agent's Bash tool driven by a
scripted upstream, on a real stack — and the defence asserted.

The stack here is fresh: the first test is the first run it ever sees, with no
upload before it (the bucket must already exist).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest

from jetty_cli.testing import StackFactory, TestStack, call
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.scenario_bash import BashScript

pytestmark = pytest.mark.timeout(300)

KEY = "sk-ant-attack-test"
MODEL = "claude-sonnet-4-6"
COLLECTION = "default"


@pytest.fixture(scope="module")
async def anthropic() -> AsyncIterator[FakeAnthropic]:
    fake = FakeAnthropic(KEY)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture(scope="module")
def attacked(stack_factory: StackFactory, anthropic: FakeAnthropic) -> Iterator[TestStack]:
    stack = stack_factory(
        env={
            "ANTHROPIC_API_KEY": KEY,
            "ANTHROPIC_BASE_URL": anthropic.base_url,
            "JETTY_RUNNER_CONCURRENCY": "2",
            "JETTY_RUNNER_MAX_ARTIFACTS": "50",
        }
    )
    yield stack
    stack.close()


def _body(task: str, **jetty: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Run the commands you are given."},
            {"role": "user", "content": "Go."},
        ],
        "jetty": {"runbook": True, "collection": COLLECTION, "task": task, "agent": "claude-code"}
        | jetty,
    }


async def run_bash(
    stack: TestStack, fake: FakeAnthropic, task: str, commands: list[str], **jetty: Any
) -> tuple[dict[str, Any], BashScript]:
    """Run ``commands`` in a claude-code runbook; its final metadata and the script
    (with what each command printed)."""
    script = BashScript(commands)
    fake.reset()
    fake.respond_with(MODEL, script)
    status, _, doc = await asyncio.to_thread(
        call, stack.base_url + "/v1/chat/completions", stack.token, _body(task, **jetty)
    )
    assert status == 200, doc
    meta = doc["jetty_metadata"]
    assert isinstance(meta, dict)
    return meta, script


def trajectory(stack: TestStack, trajectory_id: str) -> dict[str, Any]:
    status, _, view = call(stack.base_url + f"/api/v1/trajectories/{trajectory_id}", stack.token)
    assert status == 200, view
    assert isinstance(view, dict)
    return view


async def until(check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(check)
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.3)


async def download(stack: TestStack, url: str) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={"Authorization": f"Bearer {stack.token}"}) as response,
    ):
        return response.status, await response.read()


# --- artifacts are never silently lost ------------------------------------------------


async def test_the_first_run_on_a_fresh_stack_keeps_its_files(
    attacked: TestStack, anthropic: FakeAnthropic
) -> None:
    """No upload ever happened on this stack: the bucket exists all the same."""
    meta, _ = await run_bash(
        attacked, anthropic, "first", ["mkdir -p out && echo first-file > out/first.txt"]
    )
    assert meta["status"] == "completed", meta["error"]
    [artifact] = [a for a in meta["artifacts"] if a["path"] == "out/first.txt"]
    status, content = await download(attacked, artifact["url"])
    assert (status, content) == (200, b"first-file\n")


async def test_a_name_that_cannot_be_a_key_is_stored_under_a_safe_one(
    attacked: TestStack, anthropic: FakeAnthropic
) -> None:
    """A newline (and a byte that is not UTF-8) in a name: every file is kept, the
    catalogue shows the original name, the download gives the bytes."""
    meta, _ = await run_bash(
        attacked,
        anthropic,
        "names",
        [
            "printf one > \"$(printf 'nl\\nname.txt')\" && printf two > plain.txt"
            " && printf three > \"$(printf 'bad\\377byte.txt')\" && printf four > 'a\\b.txt'"
        ],
    )
    assert meta["status"] == "completed", meta["error"]
    found = {a["path"]: a for a in meta["artifacts"]}
    assert set(found) == {"nl\nname.txt", "plain.txt", "bad\\xffbyte.txt", "a\\b.txt"}, found
    for path, expected in (
        ("nl\nname.txt", b"one"),
        ("plain.txt", b"two"),
        ("bad\\xffbyte.txt", b"three"),
        ("a\\b.txt", b"four"),
    ):
        status, content = await download(attacked, found[path]["url"])
        assert (status, content) == (200, expected), path


async def test_files_past_the_bound_fail_the_run_and_the_others_are_kept(
    attacked: TestStack, anthropic: FakeAnthropic
) -> None:
    """More files than a run may store (this stack's bound: 50): the 50 are kept,
    each of the others is named in the run's error, and the run is not a clean
    ``completed``."""
    meta, _ = await run_bash(
        attacked,
        anthropic,
        "too-many",
        ["mkdir -p many && for i in $(seq 10 62); do echo $i > many/f$i.txt; done"],
    )
    assert meta["status"] == "failed"
    assert meta["error"]["code"] == "artifacts_incomplete"
    assert "3 of its files could not be stored" in meta["error"]["message"]
    assert "'many/f62.txt': over the bound of 50 files" in meta["error"]["message"]
    assert len(meta["artifacts"]) == 50
    view = trajectory(attacked, meta["trajectory_id"])
    assert view["status"] == "failed" and len(view["artifacts"]) == 50
