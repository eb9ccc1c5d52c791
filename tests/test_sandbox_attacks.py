"""The sandbox under attack: each finding of the probe, run again the way the probe
ran it — from inside a real claude-code runbook, the agent's Bash tool driven by a
scripted upstream, on a real stack — and the defence asserted.

The stack here is fresh: the first test is the first run it ever sees, with no
upload before it (the bucket must already exist).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from jetty_cli.testing import StackFactory, TestStack, call, traversable_tmpdir
from tests.fakes.anthropic_upstream import FakeAnthropic, Script
from tests.fakes.scenario_bash import BashScript
from tests.helpers import fake_anthropic_fixture

pytestmark = pytest.mark.timeout(300)

KEY = "sk-ant-attack-test"
MODEL = "claude-sonnet-4-6"
COLLECTION = "default"


anthropic = fake_anthropic_fixture(KEY)


@pytest.fixture(scope="module")
def attacked(stack_factory: StackFactory, anthropic: FakeAnthropic) -> Iterator[TestStack]:
    runs = traversable_tmpdir("jetty-attack-runs-")  # the sandbox's host user passes through
    stack = stack_factory(
        env={
            "JETTY_RUNNER_WORKSPACE_ROOT": str(runs / "r"),
            "ANTHROPIC_API_KEY": KEY,
            "ANTHROPIC_BASE_URL": anthropic.base_url,
            "JETTY_RUNNER_CONCURRENCY": "2",
            "JETTY_RUNNER_ACK_WAIT": "3",
            "JETTY_RUNNER_MAX_ARTIFACTS": "50",
        }
    )
    yield stack
    stack.close()
    shutil.rmtree(runs, ignore_errors=True)


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
    status, doc = await post(stack, _body(task, **jetty))
    assert status == 200, doc
    meta = doc["jetty_metadata"]
    assert isinstance(meta, dict)
    return meta, script


async def post(stack: TestStack, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """POST a chat completion and wait for its answer (a runbook's can take a while)."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=240)) as session,
        session.post(
            stack.base_url + "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {stack.token}"},
        ) as response,
    ):
        doc = await response.json()
        assert isinstance(doc, dict)
        return response.status, doc


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


# --- the record must be the truth -----------------------------------------------------

ATTACKS = Path(__file__).parent / "fixtures" / "attacks"
FORGE = (ATTACKS / "forge_steps.py").read_text()
FLOOD = (ATTACKS / "flood.py").read_text()


def _python(script: str) -> str:
    """A Bash command that runs ``script`` with the sandbox's python3."""
    return f"python3 - <<'JETTY_PY'\n{script}\nJETTY_PY"


def _report(output: str) -> dict[str, str]:
    found = {}
    for line in output.splitlines():
        name, sep, result = line.partition(": ")
        if sep:
            found[name.strip()] = result.strip()
    return found


async def test_a_process_in_the_sandbox_cannot_forge_the_agents_steps(
    attacked: TestStack, anthropic: FakeAnthropic
) -> None:
    """The probe took the agent's stdout with pidfd_getfd and wrote an assistant
    text it never said and a ``Write /etc/passwd`` it never made; it also made a
    nested user namespace and ptrace-d the agent. Each is refused now, and the
    record holds only what the agent itself printed."""
    meta, script = await run_bash(attacked, anthropic, "forge", [_python(FORGE)])
    assert meta["status"] == "completed", meta["error"]
    report = _report(script.outputs[0])
    assert report["agent"].isdigit(), script.outputs
    assert report["pidfd_getfd"] == "EPERM", report
    assert report["proc_fd"] == "ENXIO", report  # a socket cannot be reopened
    assert report["ptrace"] == "EPERM", report
    assert report["process_vm_readv"] == "EPERM", report
    assert report["unshare"] != "ok" and report["unshare_syscall"] == "EPERM", report
    for name in ("bpf", "perf_event_open", "keyctl"):
        assert report[name] == "EPERM", report
    view = trajectory(attacked, meta["trajectory_id"])
    # (the command itself, in the Bash call's input, names them: look at the steps)
    assert not [s for s in view["steps"] if s.get("text") == "FORGED-ASSISTANT-TEXT"]
    assert not [s for s in view["steps"] if s.get("tool_call_id") == "toolu_forged"]
    assert [s["tool_name"] for s in view["steps"] if s["kind"] == "tool_call"] == ["Bash"]
    # Who says what: the model calls are the gateway's own record, the rest the
    # agent's account.
    origins = {s["kind"]: s["origin"] for s in view["steps"]}
    assert origins["completion"] == "gateway"
    assert origins["tool_call"] == origins["tool_result"] == "agent"


async def test_every_field_from_the_agents_output_is_bounded(
    attacked: TestStack, anthropic: FakeAnthropic
) -> None:
    """A model answer (the agent prints it as it is) with a 40 KB tool name and a
    tool input of 600 keys: the step keeps a clipped name and a bounded input.
    (The probe's 3 MB name is past what claude-code itself takes as a prompt.)"""
    huge_name = "T" * 40_000
    huge_input = json.dumps({f"k{i}": "v" * 10 for i in range(600)})
    anthropic.reset()
    anthropic.respond_with(
        MODEL,
        lambda body: (
            Script(text="ok")
            if "tool_result" in json.dumps(body.get("messages", []))
            else Script(tool_calls=[(huge_name, huge_input)])
        ),
    )
    status, doc = await post(attacked, _body("bounds"))
    assert status == 200, doc
    view = trajectory(attacked, doc["jetty_metadata"]["trajectory_id"])
    [tool_call] = [s for s in view["steps"] if s["kind"] == "tool_call"]
    assert len(tool_call["tool_name"]) <= 256 and tool_call["tool_name"].endswith("[clipped]")
    assert len(tool_call["tool_input"]) == 257
    assert tool_call["tool_input"]["…[clipped]"] == "344 more entries"


async def test_a_model_with_no_price_is_refused_when_the_run_has_a_dollar_budget(
    attacked: TestStack, anthropic: FakeAnthropic
) -> None:
    """The probe made 20 calls to an unpriced model under ``max_cost_usd``, all
    allowed (``cost_usd: null`` counted as nothing). Now the first is refused
    before it goes upstream, and the run fails naming the model."""
    model = "anthropic/claude-unpriced-probe"
    anthropic.reset()
    anthropic.respond_with("claude-unpriced-probe", BashScript(["echo spent"] * 20))
    body = _body("unpriced", budget={"max_cost_usd": "0.50"}) | {"model": model}
    status, doc = await post(attacked, body)
    assert status == 200, doc
    meta = doc["jetty_metadata"]
    assert meta["status"] == "failed"
    assert meta["error"]["code"] == "model_price_unknown", meta["error"]
    assert model in meta["error"]["message"] and "$0.50" in meta["error"]["message"]
    assert len(anthropic.requests) == 0  # nothing reached the provider


# --- one run must not be able to hurt another run or the host --------------------------


async def test_memory_is_limited_for_the_run_as_a_whole(
    attacked: TestStack, anthropic: FakeAnthropic
) -> None:
    """The probe's three 3 GB processes plus 2 GB in a tmpfs took 11 GB of the
    host. Here, with ``jetty.limits.memory_mb`` 1024: three processes of 300 MB and
    200 MB in /dev/shm together pass the run's limit, though each is well inside
    the per-process one — the run fails naming memory, the host keeps its memory."""
    hog = "python3 -c 'import time; x = b\"\\1\" * (300 << 20); time.sleep(4)'"
    command = (
        "dd if=/dev/zero of=/dev/shm/fill bs=1M count=200 2>/dev/null; "
        f"({hog}) & ({hog}) & ({hog}) & wait; echo survived"
    )
    meta, _ = await run_bash(attacked, anthropic, "memory", [command], limits={"memory_mb": 1024})
    assert meta["status"] == "failed", meta
    assert meta["error"]["code"] == "resource_exhausted", meta["error"]
    assert "memory (1024 MB" in meta["error"]["message"]


async def test_processes_are_limited_for_the_run_as_a_whole(
    attacked: TestStack, anthropic: FakeAnthropic
) -> None:
    meta, _ = await run_bash(
        attacked,
        anthropic,
        "fork",
        ["for i in $(seq 1 400); do (sleep 3 &) 2>/dev/null; done; echo forked"],
        limits={"max_processes": 200},
    )
    assert meta["status"] == "failed", meta
    assert meta["error"]["code"] == "resource_exhausted", meta["error"]
    assert "processes (200 processes)" in meta["error"]["message"]


async def test_disk_is_limited_for_workspace_home_and_tmp_together(
    attacked: TestStack, anthropic: FakeAnthropic
) -> None:
    """The probe put six 1,000 MB files under the runs folder, each inside the
    per-file limit. With ``disk_mb`` 256 the workspace, home and /tmp share 256 MB:
    the writes stop there, the run fails naming disk, and the files are gone with
    the run."""
    command = (
        "dd if=/dev/zero of=/tmp/a bs=1M count=150 2>&1 | tail -1; "
        "dd if=/dev/zero of=$HOME/b bs=1M count=150 2>&1 | head -1; "
        "df -m /workspace /tmp $HOME | tail -3"
    )
    meta, script = await run_bash(attacked, anthropic, "disk", [command], limits={"disk_mb": 256})
    assert "No space left on device" in script.outputs[0], script.outputs
    assert meta["status"] == "failed", meta
    assert meta["error"]["code"] == "resource_exhausted", meta["error"]
    assert meta["error"]["status"] == 507
    assert "disk (256 MB" in meta["error"]["message"]


async def test_limits_past_the_operators_maximum_are_refused(attacked: TestStack) -> None:
    body = _body("too-big", limits={"memory_mb": 1_000_000})
    status, doc = await post(attacked, body)
    assert status == 400, doc
    assert doc["error"]["param"] == "jetty.limits.memory_mb"
    assert "at most 8192" in doc["error"]["message"]


async def test_a_relay_flood_degrades_only_the_run_that_floods(
    attacked: TestStack, anthropic: FakeAnthropic
) -> None:
    """The probe's 15,000 connections to the sandbox's gateway socket exhausted
    the runner's descriptors and a run started meanwhile failed in 10 ms. Now the
    flooding run holds at most its relay's bound, and a run started during the
    flood completes with its files."""
    flood_model, calm_model = "claude-sonnet-4-5", MODEL
    flood_script = BashScript([_python(FLOOD)])
    calm_script = BashScript(["echo calm > calm.txt"])
    anthropic.reset()
    anthropic.respond_with(flood_model, flood_script)
    anthropic.respond_with(calm_model, calm_script)
    flood_body = _body("flood") | {"model": flood_model}
    flooding = asyncio.create_task(post(attacked, flood_body))
    await asyncio.sleep(4)  # the flood's agent is up and flooding
    status, doc = await post(attacked, _body("calm"))
    assert status == 200, doc
    calm = doc["jetty_metadata"]
    assert calm["status"] == "completed", calm["error"]
    assert [a["path"] for a in calm["artifacts"]] == ["calm.txt"]
    status, doc = await flooding
    assert status == 200, doc
    assert doc["jetty_metadata"]["status"] == "completed", doc["jetty_metadata"]["error"]
    held = int(_report(flood_script.outputs[0])["open"])
    assert 0 < held <= 64, flood_script.outputs


async def test_the_sandbox_sees_nothing_of_the_hosts_layout(
    attacked: TestStack, anthropic: FakeAnthropic
) -> None:
    """The probe read the host's venv path in /proc/1/cmdline, the run folder's host
    path in mountinfo, and all of the host's /usr."""
    meta, script = await run_bash(
        attacked,
        anthropic,
        "layout",
        [
            "tr '\\0' ' ' < /proc/1/cmdline; echo; cat /proc/self/mountinfo; "
            "ls /usr; ls /usr/local 2>&1 | head -1"
        ],
    )
    assert meta["status"] == "completed", meta["error"]
    cmdline, *rest = script.outputs[0].splitlines()
    assert cmdline.startswith("./bwrap --args "), cmdline
    assert ".venv" not in cmdline and "site-packages" not in cmdline, cmdline
    mountinfo = [line for line in rest if line[:1].isdigit()]
    root = attacked.config.extra_env["JETTY_RUNNER_WORKSPACE_ROOT"]
    assert not [line for line in mountinfo if root in line], mountinfo
    # The run's folders come from its own filesystem: no host path in their root.
    for target in ("/workspace", "/home/agent", "/tmp", "/run/jetty"):
        [line] = [line for line in mountinfo if line.split()[4] == target]
        assert line.split()[3] in ("/workspace", "/home", "/tmp", "/jetty"), line
    usr = {line for line in rest if line and not line[:1].isdigit() and "/" not in line}
    assert "local" not in usr and "src" not in usr and {"bin", "lib"} <= usr, usr
    assert "cannot access '/usr/local'" in rest[-1], rest[-1]


async def test_run_folders_of_a_runner_that_died_are_swept(
    attacked: TestStack, anthropic: FakeAnthropic
) -> None:
    """A runner killed mid-run leaves its run's folder (and its filesystem
    mounted); the next runner removes both when it starts."""
    root = Path(attacked.config.extra_env["JETTY_RUNNER_WORKSPACE_ROOT"])

    def folders() -> list[Path]:
        return [p for p in root.iterdir() if p.is_dir()]

    # (runs of the tests before may still be cleaning up after their answer)
    assert await until(lambda: not folders(), 30), folders()
    anthropic.reset()
    anthropic.respond_with(MODEL, BashScript(["sleep 60"]))
    running = asyncio.create_task(post(attacked, _body("swept")))

    assert await until(lambda: [f for f in folders() if (f / "fs" / "workspace").is_dir()], 60)
    left = folders()
    attacked.kill("runner")
    assert all((f / "fs").is_mount() for f in left)
    await attacked.restart_async("runner")
    assert await until(lambda: not any(f.exists() for f in left), 30), left
    mounts = await asyncio.to_thread(Path("/proc/self/mountinfo").read_text)
    assert not any(str(f) in mounts for f in left)
    status, doc = await running
    assert status == 200 and doc["jetty_metadata"]["error"]["code"] == "runner_lost", doc
