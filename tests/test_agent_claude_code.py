"""The claude-code adapter: its command, its stream parser, and the real CLI end to end.

Parser tests read output captured from the pinned CLI (tests/fixtures/agents/,
paths rewritten to ``/workspace``). The end-to-end tests run the real ``claude``
binary without a sandbox against a whole stack whose Anthropic provider is a local
fake playing :mod:`tests.fakes.scenario_claude_code`: read the CSV, write a summary
computed from it, answer.
"""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from jetty_cli.testing import StackFactory, TestStack, traversable_tmpdir
from services.runner.agents.base import AgentCommand, AgentSpec, ParsedStep
from services.runner.agents.claude_code import (
    RUNBOOK_FILE,
    TOOL_OUTPUT_LIMIT,
    ClaudeCodeAdapter,
    ClaudeCodeParser,
)
from shared.events.runbook import AgentOutcome
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.scenario_claude_code import (
    DATA_PATH,
    FINAL_PREFIX,
    PREFACE,
    SUMMARY_PATH,
    ReadSummarizeWrite,
)

ROOT = Path(__file__).resolve().parent.parent
AGENTS_DIR = str(ROOT / "agents")
FIXTURES = Path(__file__).parent / "fixtures" / "agents"
ANTHROPIC_KEY = "sk-ant-agent-claude-code"
MODEL = "claude-sonnet-4-6"
CSV_TEXT = "region,amount,units\nnorth,12.5,3\nsouth,30,4\neast,7,10\nwest,0.5,1\n"
AGENT_TIMEOUT = 60.0


def _spec(**overrides: str) -> AgentSpec:
    fields = {
        "model": MODEL,
        "runbook": "You summarise data files.",
        "prompt": "Summarise uploads/data.csv into results/summary.md",
        "gateway_url": "http://127.0.0.1:18080",
        "token": "jt_run_token_123",
        "workspace": "/workspace",
        "home": "/home/agent",
        "agents_dir": "/opt/agents",
    }
    return AgentSpec(**{**fields, **overrides})


def _replay(name: str, parser: ClaudeCodeParser) -> list[ParsedStep]:
    """Feed a captured stream, one second per line (so times tell lines apart)."""
    steps: list[ParsedStep] = []
    for i, line in enumerate((FIXTURES / name).read_text().splitlines()):
        steps += parser.feed(line, 1000.0 + i)
    return steps


# --- the parser, over captured output ---------------------------------------------------


def test_parser_reads_every_step_kind_of_a_real_run() -> None:
    parser = ClaudeCodeParser()
    steps = _replay("claude_code_summary.jsonl", parser)
    assert [(s.kind, s.tool_name) for s in steps] == [
        ("message", None),
        ("tool_call", "Read"),
        ("tool_result", "Read"),
        ("tool_call", "Write"),
        ("tool_result", "Write"),
        ("message", None),
    ]
    preface, read, read_result, write, write_result, final = steps
    assert preface.text == PREFACE
    assert read.tool_input == {"file_path": f"/workspace/{DATA_PATH}"}
    assert read.tool_call_id is not None and read.tool_call_id.startswith("toolu_")
    assert read_result.tool_call_id == read.tool_call_id
    assert read_result.text is not None and "2\tnorth,12" in read_result.text
    assert not read_result.is_error
    # A result is timed from the moment its call was asked for.
    assert read_result.started == read.started and read_result.ended > read.ended
    assert write_result.started == write.started
    assert write.tool_input is not None
    assert write.tool_input["file_path"] == f"/workspace/{SUMMARY_PATH}"
    assert "rows: 3" in write.tool_input["content"]
    assert final.text is not None and final.text.startswith(FINAL_PREFIX)
    # A message began when the line before it was read (its model call was under way
    # from then on) and ended with its own line.
    assert (preface.started, preface.ended) == (1000.0, 1001.0)

    outcome = parser.outcome(0)
    assert outcome.result == final.text
    assert outcome.exit_code == 0 and outcome.num_turns == 3
    assert outcome.reported_usage["output_tokens"] > 0
    assert outcome.reported_usage["input_tokens"] > 0
    assert all(type(v) is int for v in outcome.reported_usage.values())
    assert "service_tier" not in outcome.reported_usage  # a string: not usage
    AgentOutcome.model_validate(outcome.model_dump())

    assert [parser.progress_text(s) for s in steps] == [
        PREFACE,
        f"→ Read {DATA_PATH}",
        f"✓ tool result ({len(read_result.text.encode())} bytes)",
        f"→ Write {SUMMARY_PATH}",
        f"✓ tool result ({len((write_result.text or '').encode())} bytes)",
        final.text,
    ]


def test_parser_marks_a_failing_tool() -> None:
    parser = ClaudeCodeParser()
    steps = _replay("claude_code_tool_error.jsonl", parser)
    assert [s.kind for s in steps] == ["tool_call", "tool_result", "message"]
    result = steps[1]
    assert result.is_error and result.text is not None
    assert result.text.startswith("File does not exist.")
    assert parser.progress_text(result) == f"✗ tool error: {result.text}"
    assert parser.outcome(0).num_turns == 2


def test_parser_reports_an_agent_that_failed() -> None:
    """A rejected key: the CLI retries (api_retry events, not steps), then prints its
    error as a message and a result with is_error, and exits 1."""
    parser = ClaudeCodeParser()
    steps = _replay("claude_code_auth_error.jsonl", parser)
    assert [s.kind for s in steps] == ["message"]
    outcome = parser.outcome(1)
    assert outcome.exit_code == 1 and outcome.num_turns == 1
    assert outcome.result is not None and "API key" in outcome.result
    assert steps[0].text == outcome.result


def test_parser_ignores_what_it_does_not_know() -> None:
    parser = ClaudeCodeParser()
    odd = [
        "",
        "not json at all",
        "{truncated",
        "[1, 2, 3]",
        '"a string"',
        '{"type": "stream_event", "event": {"type": "content_block_delta"}}',
        '{"type": "system", "subtype": "compact_boundary"}',
        '{"type": "assistant"}',
        '{"type": "assistant", "message": {"content": "text, not blocks"}}',
        '{"type": "assistant", "message": {"content": [1, null, {"type": "thinking"}]}}',
        '{"type": "assistant", "message": {"content": [{"type": "text", "text": "  "}]}}',
        '{"type": "user", "message": {"content": [{"type": "text", "text": "hi"}]}}',
        '{"type": "result", "num_turns": true, "result": 5, "usage": "none"}',
    ]
    assert [step for line in odd for step in parser.feed(line, 1.0)] == []
    assert parser.outcome(None) == AgentOutcome(exit_code=None)
    # Garbage between real lines changes nothing.
    clean, noisy = ClaudeCodeParser(), ClaudeCodeParser()
    lines = (FIXTURES / "claude_code_summary.jsonl").read_text().splitlines()
    expected = [s for i, line in enumerate(lines) for s in clean.feed(line, float(i))]
    got: list[ParsedStep] = []
    for i, line in enumerate(lines):
        got += noisy.feed("garbage ⚠", float(i))
        got += noisy.feed(line, float(i))
    assert [(s.kind, s.text, s.tool_call_id) for s in got] == [
        (s.kind, s.text, s.tool_call_id) for s in expected
    ]
    assert noisy.outcome(0) == clean.outcome(0)


def test_parser_truncates_long_tool_output_and_reads_block_content() -> None:
    parser = ClaudeCodeParser()
    call: dict[str, Any] = {
        "type": "tool_use",
        "id": "toolu_1",
        "name": "Bash",
        "input": {"command": "ls\n-la"},
    }
    parser.feed(orjson.dumps({"type": "assistant", "message": {"content": [call]}}).decode(), 5.0)
    long = "é" * TOOL_OUTPUT_LIMIT
    blocks = [{"type": "text", "text": long}, {"type": "image", "source": {}}]
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": blocks}
    line = orjson.dumps({"type": "user", "message": {"content": [result]}}).decode()
    (step,) = parser.feed(line, 9.0)
    assert step.started == 5.0 and step.ended == 9.0 and step.tool_name == "Bash"
    assert step.text is not None and step.text.startswith("é" * (TOOL_OUTPUT_LIMIT // 2))
    assert len(step.text.encode()) < TOOL_OUTPUT_LIMIT + 100
    assert step.text.endswith("more bytes]") and "[image]" not in step.text
    tool_call = ParsedStep(
        kind="tool_call", started=0, ended=0, tool_name="Bash", tool_input=call["input"]
    )
    assert parser.progress_text(tool_call) == "→ Bash ls"


# --- the command -------------------------------------------------------------------------


def test_command_runs_headless_against_the_gateway_only() -> None:
    spec = _spec()
    command = ClaudeCodeAdapter().command(spec)
    argv = command.argv
    assert argv[0].startswith("/opt/agents/node_modules/@anthropic-ai/claude-code-")
    assert argv[0].endswith("/claude")
    assert argv[1] == "-p"
    flags = {flag: value for flag, value in itertools.pairwise(argv) if flag.startswith("--")}
    assert flags["--output-format"] == "stream-json" and "--verbose" in argv
    assert flags["--model"] == MODEL
    assert flags["--permission-mode"] == "bypassPermissions"
    assert flags["--append-system-prompt-file"] == f"/home/agent/{RUNBOOK_FILE}"
    assert command.home_files == {RUNBOOK_FILE: spec.runbook.encode()}
    # The prompt goes on stdin: never mistaken for a flag, no argv size limit.
    assert command.stdin == spec.prompt.encode()
    assert spec.prompt not in argv and spec.token not in " ".join(argv)

    env = command.env
    assert env["ANTHROPIC_BASE_URL"] == spec.gateway_url
    assert env["ANTHROPIC_API_KEY"] == spec.token
    assert env["HOME"] == "/home/agent" and env["TMPDIR"].startswith("/home/agent/")
    assert env["PATH"].split(":")[0] == "/opt/agents/node_modules/.bin"
    assert {"/usr/bin", "/bin"} <= set(env["PATH"].split(":"))
    for off in ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "DISABLE_TELEMETRY", "IS_SANDBOX"):
        assert env[off] == "1"
    assert int(env["CLAUDE_CODE_MAX_RETRIES"]) <= 3
    assert env["CLAUDE_CODE_SUBAGENT_MODEL"] == env["ANTHROPIC_DEFAULT_HAIKU_MODEL"] == MODEL
    # Nothing of the host's environment: no key the adapter did not choose, and no
    # host value (other than plain paths) anywhere in it.
    assert set(env) == {
        "PATH",
        "HOME",
        "TMPDIR",
        "SHELL",
        "ANTHROPIC_BASE_URL",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_DEFAULT_HAIKU_MODEL",
        "ANTHROPIC_SMALL_FAST_MODEL",
        "CLAUDE_CODE_SUBAGENT_MODEL",
        "CLAUDE_CODE_MAX_RETRIES",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
        "DISABLE_TELEMETRY",
        "DISABLE_ERROR_REPORTING",
        "DISABLE_AUTOUPDATER",
        "IS_SANDBOX",
    }
    host_values = {v for k, v in os.environ.items() if len(v) > 8 and k not in ("SHELL",)}
    assert not host_values & set(env.values())


def test_command_without_a_runbook_adds_no_system_prompt() -> None:
    command = ClaudeCodeAdapter().command(_spec(runbook="  ", gateway_url="http://gw:1/"))
    assert command.home_files == {}
    assert not any("system-prompt" in a for a in command.argv)
    assert command.env["ANTHROPIC_BASE_URL"] == "http://gw:1"


def test_command_names_the_installed_cli() -> None:
    """The binary the command names exists here and is the pinned version."""
    binary = ClaudeCodeAdapter().command(_spec(agents_dir=AGENTS_DIR)).argv[0]
    assert os.access(binary, os.X_OK), binary
    pinned = orjson.loads((ROOT / "agents" / "package.json").read_bytes())
    version = pinned["dependencies"]["@anthropic-ai/claude-code"]
    package = orjson.loads((Path(binary).parent / "package.json").read_bytes())
    assert package["version"] == version


# --- end to end: the real CLI, the whole stack, a fake Anthropic ------------------------


@pytest.fixture(scope="module")
async def fake() -> AsyncIterator[FakeAnthropic]:
    upstream = FakeAnthropic(api_key=ANTHROPIC_KEY)
    await upstream.start()
    yield upstream
    await upstream.stop()


@pytest.fixture(scope="module")
def gw(stack_factory: StackFactory, fake: FakeAnthropic) -> TestStack:
    return stack_factory(
        env={"ANTHROPIC_API_KEY": ANTHROPIC_KEY, "ANTHROPIC_BASE_URL": fake.base_url}
    )


@dataclass
class Run:
    workspace: Path
    exit_code: int
    steps: list[ParsedStep]
    outcome: AgentOutcome
    progress: list[str]
    stderr: str


async def _run_agent(command: AgentCommand, workspace: Path, home: Path) -> Run:
    for relative, data in command.home_files.items():
        target = home / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    process = await asyncio.create_subprocess_exec(
        *command.argv,
        env=command.env,
        cwd=workspace,
        stdin=asyncio.subprocess.PIPE if command.stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    if command.stdin is not None:
        assert process.stdin is not None
        process.stdin.write(command.stdin)
        await process.stdin.drain()
        process.stdin.close()
    parser = ClaudeCodeParser()
    steps: list[ParsedStep] = []

    async def read() -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            steps.extend(parser.feed(raw.decode().rstrip("\n"), time.time()))

    try:
        _, stderr, exit_code = await asyncio.wait_for(
            asyncio.gather(read(), process.stderr.read(), process.wait()), AGENT_TIMEOUT
        )
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    progress = [text for s in steps if (text := parser.progress_text(s)) is not None]
    return Run(workspace, exit_code, steps, parser.outcome(exit_code), progress, stderr.decode())


def _expected_summary_lines() -> list[str]:
    """What the summary must say, computed here from the CSV itself."""
    rows = list(csv.DictReader(io.StringIO(CSV_TEXT)))
    amount = sum(float(r["amount"]) for r in rows)
    units = sum(int(r["units"]) for r in rows)
    return [f"rows: {len(rows)}", f"sum of amount: {amount:g}", f"sum of units: {units}"]


async def _trajectories(stack: TestStack, token: str, expected: int) -> list[dict[str, Any]]:
    """The collection's completed trajectories, once the projection holds ``expected``."""
    url = f"{stack.base_url}/api/v1/trajectories?limit=50&status=completed"
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(url, headers=headers) as response:
                assert response.status == 200, await response.text()
                page = await response.json()
            data: list[dict[str, Any]] = page["data"]
            if len(data) >= expected or time.monotonic() > deadline:
                return data
            await asyncio.sleep(0.2)


def _chown_tree(root: Path, uid: int) -> None:
    for path in (root, *root.rglob("*")):
        os.chown(path, uid, uid)


async def _scenario_run(
    gw: TestStack, fake: FakeAnthropic, token: str, root: Path, as_uid: int | None = None
) -> Run:
    workspace, home = root / "workspace", root / "home"
    (workspace / "uploads").mkdir(parents=True)
    home.mkdir()
    (workspace / DATA_PATH).write_text(CSV_TEXT)
    fake.respond_with(MODEL, ReadSummarizeWrite(str(workspace)))
    spec = AgentSpec(
        model=MODEL,
        runbook="You are a careful data analyst. Write results under results/.",
        prompt=f"Summarise {DATA_PATH} into {SUMMARY_PATH}.",
        gateway_url=gw.base_url,
        token=token,
        workspace=str(workspace),
        home=str(home),
        agents_dir=AGENTS_DIR,
    )
    command = ClaudeCodeAdapter().command(spec)
    if as_uid is not None:
        await asyncio.to_thread(_chown_tree, root, as_uid)
        prefix = ["setpriv", f"--reuid={as_uid}", f"--regid={as_uid}", "--clear-groups"]
        command = AgentCommand(
            argv=[*prefix, *command.argv],
            env=command.env,
            home_files=command.home_files,
            stdin=command.stdin,
        )
    return await _run_agent(command, workspace, home)


@pytest.fixture
def run_root() -> Iterator[Path]:
    root = traversable_tmpdir("jetty-claude-code-")
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.timeout(100)
async def test_claude_code_reads_summarises_and_writes_through_the_gateway(
    gw: TestStack, fake: FakeAnthropic, run_root: Path
) -> None:
    fake.reset()
    token = await gw.create_token(f"claude-code-{secrets.token_hex(3)}")
    run = await _scenario_run(gw, fake, token, run_root)
    assert run.exit_code == 0, run.stderr[-2000:]

    summary = (run.workspace / SUMMARY_PATH).read_text()
    assert summary.splitlines()[2:] == _expected_summary_lines()

    kinds = [(s.kind, s.tool_name) for s in run.steps]
    assert kinds == [
        ("message", None),
        ("tool_call", "Read"),
        ("tool_result", "Read"),
        ("tool_call", "Write"),
        ("tool_result", "Write"),
        ("message", None),
    ]
    read, read_result, write, write_result = run.steps[1:5]
    assert read.tool_input == {"file_path": str(run.workspace / DATA_PATH)}
    assert read_result.text is not None and "north,12.5,3" in read_result.text
    assert write.tool_input == {"file_path": str(run.workspace / SUMMARY_PATH), "content": summary}
    assert (read_result.tool_call_id, write_result.tool_call_id) == (
        read.tool_call_id,
        write.tool_call_id,
    )
    assert not read_result.is_error and not write_result.is_error
    assert all(s.started <= s.ended for s in run.steps)
    assert f"→ Write {SUMMARY_PATH}" in run.progress

    outcome = run.outcome
    assert outcome.exit_code == 0 and outcome.num_turns == 3
    assert outcome.result is not None and outcome.result.startswith(FINAL_PREFIX)
    assert outcome.result == run.steps[-1].text

    # Every model call went through the gateway and was recorded with its usage.
    answered = [r for r in fake.requests if r.status == 200]
    assert len(answered) == 3 and all(r.body["model"] == MODEL for r in answered)
    trajectories = await _trajectories(gw, token, len(answered))
    assert len(trajectories) == len(answered)
    assert {t["model"] for t in trajectories} == {MODEL}
    assert all(t["usage"]["prompt_tokens"] > 0 for t in trajectories)
    assert all(t["usage"]["completion_tokens"] > 0 for t in trajectories)
    reported = outcome.reported_usage
    assert sum(t["usage"]["completion_tokens"] for t in trajectories) == reported["output_tokens"]
    prompt = reported["input_tokens"] + reported.get("cache_read_input_tokens", 0)
    prompt += reported.get("cache_creation_input_tokens", 0)
    assert sum(t["usage"]["prompt_tokens"] for t in trajectories) == prompt


@pytest.mark.timeout(100)
@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv"
)
async def test_claude_code_runs_the_same_as_an_unprivileged_user(
    gw: TestStack, fake: FakeAnthropic, run_root: Path
) -> None:
    """The sandbox may run the agent as uid 1000 (bwrap --uid 1000): same command,
    same result."""
    fake.reset()
    token = await gw.create_token(f"claude-code-{secrets.token_hex(3)}")
    run = await _scenario_run(gw, fake, token, run_root, as_uid=1000)
    assert run.exit_code == 0, run.stderr[-2000:]
    assert (run.workspace / SUMMARY_PATH).stat().st_uid == 1000
    summary = (run.workspace / SUMMARY_PATH).read_text()
    assert summary.splitlines()[2:] == _expected_summary_lines()
    assert [s.tool_name for s in run.steps if s.kind == "tool_call"] == ["Read", "Write"]
    assert run.outcome.num_turns == 3
