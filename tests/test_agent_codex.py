"""The codex adapter: its command, its ``--json`` parser over output captured from
codex-cli 0.171 (the workspace path in the captures rewritten to ``/workspace``),
and the real CLI end to end through the gateway's Responses ingress to the fake
OpenAI upstream, reading a CSV and writing ``results/summary.md`` (no sandbox)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from jetty_cli.testing import StackFactory, TestStack
from services.runner.agents.base import AgentSpec, ParsedStep
from services.runner.agents.codex import (
    CONFIG_PATH,
    MAX_ARGV_PROMPT_BYTES,
    MAX_RESULT_BYTES,
    TOKEN_ENV,
    CodexAdapter,
    CodexStreamParser,
    shell_script,
    toml_string,
)
from shared.events.runbook import AgentOutcome
from tests.fakes.openai_upstream import FakeUpstream, Script
from tests.fakes.scenario_codex import (
    FINAL_TEXT,
    INPUT_PATH,
    READ_FAILED,
    SUMMARY_PATH,
    codex_scenario,
)

REPO = Path(__file__).resolve().parent.parent
AGENTS_DIR = str(REPO / "agents")
FIXTURES = Path(__file__).parent / "fixtures" / "agents"
KEY = "sk-upstream-codex-1"
MODEL = "gpt-4o"
AGENT_TIMEOUT = 60.0


def _feed(lines: list[str], start: float = 1000.0) -> tuple[CodexStreamParser, list[ParsedStep]]:
    parser = CodexStreamParser()
    steps: list[ParsedStep] = []
    for i, line in enumerate(lines):
        steps += parser.feed(line, start + i)
    return parser, steps


def _capture(name: str) -> list[str]:
    return (FIXTURES / name).read_text().splitlines()


def _spec(**overrides: str) -> AgentSpec:
    fields = {
        "model": MODEL,
        "runbook": 'Summarise the data.\nWrite "results/summary.md" \\ nothing else.',
        "prompt": "-Summarise uploads/data.csv",
        "gateway_url": "http://127.0.0.1:18080",
        "token": "jt_run_token_1",
        "workspace": "/workspace",
        "home": "/home/agent",
        "agents_dir": "/opt/agents",
    }
    return AgentSpec(**{**fields, **overrides})


# --- the parser over captured output ------------------------------------------------------


def test_parser_reads_a_whole_run() -> None:
    parser, steps = _feed(_capture("codex_run.jsonl"))
    assert [(s.kind, s.tool_name) for s in steps] == [
        ("tool_call", "exec_command"),
        ("tool_result", "exec_command"),
        ("tool_call", "apply_patch"),
        ("tool_result", "apply_patch"),
        ("message", None),
    ]
    read_call, read_result, write_call, write_result, message = steps
    assert read_call.tool_input == {"command": "/bin/bash -lc 'cat /workspace/uploads/data.csv'"}
    assert read_call.tool_call_id == read_result.tool_call_id == "item_1"
    assert read_result.text == "fruit,qty,price\napple,3,1.5\npear,4,2\nfig,10,0.25\n"
    assert not read_result.is_error
    # A result's time span starts when its call was issued (lines are 1 s apart here).
    assert read_result.started == read_call.started == 1003.0 and read_result.ended == 1004.0
    assert write_call.tool_input == {
        "changes": [{"path": "/workspace/results/summary.md", "kind": "add"}]
    }
    assert write_result.tool_call_id == "item_2" and not write_result.is_error
    assert write_result.text == "add /workspace/results/summary.md"
    assert message.text == "I read uploads/data.csv and wrote its summary to results/summary.md."
    assert message.started == 1006.0 and message.ended == 1007.0
    assert parser.thread_id == "01a21836-aca3-7983-b3ce-eb36af206905"

    outcome = parser.outcome(0)
    assert outcome == AgentOutcome(
        result=message.text,
        exit_code=0,
        num_turns=1,
        reported_usage={
            "input_tokens": 15644,
            "cached_input_tokens": 0,
            "cache_write_input_tokens": 0,
            "output_tokens": 81,
            "reasoning_output_tokens": 0,
        },
    )
    assert [parser.progress_text(s) for s in steps] == [
        "→ $ cat /workspace/uploads/data.csv",
        "✓ tool result (49 bytes)",
        "→ apply_patch add /workspace/results/summary.md",
        "✓ tool result (33 bytes)",
        message.text,
    ]


def test_parser_marks_a_failing_command() -> None:
    parser, steps = _feed(_capture("codex_failed_tool.jsonl"))
    assert [s.kind for s in steps] == ["tool_call", "tool_result", "message"]
    result = steps[1]
    assert result.is_error
    assert result.text == "cat: missing.csv: No such file or directory\n"
    assert parser.progress_text(result) == "✗ exec_command failed (44 bytes)"
    assert parser.outcome(0).result == "The file missing.csv does not exist."


def test_parser_reports_a_failed_turn() -> None:
    parser, steps = _feed(_capture("codex_turn_failed.jsonl"))
    assert steps == []
    outcome = parser.outcome(1)
    # The upstream's OpenAI error body, reduced to its message.
    assert outcome.result == "Invalid value for temperature."
    assert outcome.exit_code == 1 and outcome.num_turns == 1 and outcome.reported_usage == {}
    assert parser.error == "Invalid value for temperature."


def test_parser_ignores_garbage_and_unknown_events() -> None:
    lines = _capture("codex_run.jsonl")
    noisy = [
        "",
        "WARNING: proceeding, even though we could not create PATH aliases",
        "{not json",
        "[1, 2]",
        '"a string"',
        '{"type": "item.completed", "item": "not an object"}',
        '{"type": "item.completed", "item": {"id": "r1", "type": "reasoning", "text": "hm"}}',
        '{"type": "item.completed", "item": {"id": "t1", "type": "todo_list", "items": []}}',
        '{"type": "item.updated", "item": {"id": "t1", "type": "todo_list", "items": []}}',
        '{"type": "turn.completed", "usage": {"input_tokens": "many", "flag": true}}',
        '{"type": "something.new", "payload": {}}',
        '{"type": "item.completed", "item": {"id": "x", "type": "command_execution", '
        '"command": ["not", "a", "string"], "exit_code": "?", "aggregated_output": 7}}',
        *lines,
    ]
    parser, steps = _feed(noisy)
    kinds = [s.kind for s in steps]
    # The odd command item still becomes a call and a result, with text made of its values.
    assert kinds == ["tool_call", "tool_result", *[s.kind for s in _feed(lines)[1]]]
    assert steps[0].tool_input == {"command": '["not", "a", "string"]'}
    assert steps[1].text == "7" and not steps[1].is_error
    outcome = parser.outcome(0)
    assert outcome.num_turns == 2  # the malformed turn.completed still counts as a turn
    assert outcome.reported_usage["input_tokens"] == 15644


def test_a_retry_that_succeeds_leaves_no_error() -> None:
    lines = [
        '{"type": "turn.started"}',
        '{"type": "error", "message": "Reconnecting... 1/1 (stream disconnected)"}',
        '{"type": "turn.completed", "usage": {"input_tokens": 10, "output_tokens": 2}}',
    ]
    parser, steps = _feed(lines)
    assert steps == [] and parser.error is None
    assert parser.outcome(0) == AgentOutcome(
        exit_code=0, num_turns=1, reported_usage={"input_tokens": 10, "output_tokens": 2}
    )


def test_long_results_are_truncated() -> None:
    output = "é" * MAX_RESULT_BYTES  # two bytes each
    item = {
        "id": "item_9",
        "type": "command_execution",
        "command": "/bin/bash -lc 'cat big'",
        "aggregated_output": output,
        "exit_code": 0,
        "status": "completed",
    }
    _, steps = _feed([json.dumps({"type": "item.completed", "item": item})])
    call, result = steps  # one completed item without a started one: both steps
    assert call.kind == "tool_call" and call.started == result.started
    assert result.text is not None
    kept, _, note = result.text.partition("\n… [")
    assert kept == "é" * (MAX_RESULT_BYTES // 2)
    assert note == f"{len(output.encode()) - MAX_RESULT_BYTES} more bytes]"


def test_mcp_and_search_items() -> None:
    mcp = {
        "id": "item_4",
        "type": "mcp_tool_call",
        "server": "docs",
        "tool": "lookup",
        "arguments": {"q": "x"},
        "result": None,
        "error": {"message": "server gone"},
        "status": "failed",
    }
    search = {"id": "item_5", "type": "web_search", "query": "csv summary"}
    parser, steps = _feed(
        [
            json.dumps({"type": "item.started", "item": mcp}),
            json.dumps({"type": "item.completed", "item": mcp}),
            json.dumps({"type": "item.completed", "item": search}),
        ]
    )
    assert [(s.kind, s.tool_name) for s in steps] == [
        ("tool_call", "docs.lookup"),
        ("tool_result", "docs.lookup"),
        ("tool_call", "web_search"),
        ("tool_result", "web_search"),
    ]
    assert steps[0].tool_input == {"q": "x"}
    assert steps[1].is_error and steps[1].text == "server gone"
    assert parser.progress_text(steps[2]) == "→ web_search csv summary"


@pytest.mark.parametrize(
    ("command", "script"),
    [
        ("/bin/bash -lc 'cat a.csv'", "cat a.csv"),
        ("/bin/bash -lc \"printf 'x\\n' > b\"", "printf 'x\\n' > b"),
        ("/bin/sh -c ls", "ls"),
        ("ls -la", "ls -la"),
        ("/bin/bash -lc 'unbalanced", "/bin/bash -lc 'unbalanced"),
    ],
)
def test_shell_script_unwraps_the_login_shell(command: str, script: str) -> None:
    assert shell_script(command) == script


# --- the command --------------------------------------------------------------------------


def test_toml_string_escapes_what_toml_requires() -> None:
    value = 'quote " backslash \\ newline \n tab \t bell \x07 del \x7f emoji 🙂 ünï'
    assert tomllib.loads(f"v = {toml_string(value)}")["v"] == value


def test_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-host-secret-openai")
    monkeypatch.setenv("JETTY_MASTER_KEY", "host-secret-jetty")
    spec = _spec()
    command = CodexAdapter().command(spec)

    assert command.argv[:2] == ["/opt/agents/node_modules/.bin/codex", "exec"]
    for flag in (
        "--json",
        "--skip-git-repo-check",
        "--dangerously-bypass-approvals-and-sandbox",
    ):
        assert flag in command.argv
    assert command.argv[command.argv.index("-m") + 1] == MODEL
    assert command.argv[-2:] == ["--", spec.prompt]
    overrides = [command.argv[i + 1] for i, a in enumerate(command.argv) if a == "-c"]
    assert 'model_provider="jetty"' in overrides
    provider = tomllib.loads(next(o for o in overrides if o.startswith("model_providers.")))
    assert provider["model_providers"]["jetty"] == {
        "name": "Jetty gateway",
        "base_url": "http://127.0.0.1:18080/v1",
        "env_key": TOKEN_ENV,
        "wire_api": "responses",
        "request_max_retries": 1,
        "stream_max_retries": 1,
    }
    assert command.stdin is None  # /dev/null: with a pipe it waits for more input

    env = command.env
    assert env[TOKEN_ENV] == spec.token
    assert env["HOME"] == spec.home and env["CODEX_HOME"] == "/home/agent/.codex"
    assert env["PATH"].split(":") == ["/opt/agents/node_modules/.bin", "/usr/bin", "/bin"]
    assert set(env) == {"PATH", "HOME", "CODEX_HOME", "TMPDIR", "LANG", "NO_COLOR", TOKEN_ENV}
    everything = " ".join([*command.argv, *env.values()])
    assert "sk-host-secret-openai" not in everything and "host-secret-jetty" not in everything
    assert spec.token not in " ".join(command.argv)  # only in the environment

    config = tomllib.loads(command.home_files[CONFIG_PATH].decode())
    assert config["developer_instructions"] == spec.runbook
    assert config["analytics"] == {"enabled": False}
    assert config["check_for_update_on_startup"] is False
    assert config["shell_environment_policy"] == {"inherit": "core"}
    assert list(command.home_files) == [CONFIG_PATH]


def test_a_long_prompt_goes_in_on_stdin() -> None:
    prompt = "-" + "y" * MAX_ARGV_PROMPT_BYTES
    command = CodexAdapter().command(_spec(prompt=prompt))
    assert command.argv[-2:] == ["--", "-"]
    assert command.stdin == prompt.encode()
    assert prompt not in command.argv


def test_command_without_a_runbook_keeps_codex_instructions() -> None:
    command = CodexAdapter().command(_spec(runbook="  \n"))
    assert "developer_instructions" not in tomllib.loads(command.home_files[CONFIG_PATH].decode())


# --- the real CLI, end to end without a sandbox -------------------------------------------


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream(api_key=KEY)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture(scope="module")
def codex_stack(stack_factory: StackFactory, upstream: FakeUpstream) -> TestStack:
    """The fake OpenAI upstream behind bare ``gpt-*`` names."""
    return stack_factory(env={"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": upstream.base_url})


@dataclass
class Run:
    exit_code: int
    steps: list[ParsedStep]
    outcome: AgentOutcome
    progress: list[str]
    stderr: str


async def _run_codex(spec: AgentSpec) -> Run:
    adapter = CodexAdapter()
    command = adapter.command(spec)
    for relative, content in command.home_files.items():
        path = Path(spec.home) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    process = await asyncio.create_subprocess_exec(
        *command.argv,
        env=command.env,
        cwd=spec.workspace,
        stdin=asyncio.subprocess.DEVNULL if command.stdin is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # the node wrapper and the native binary go together
        limit=4 * 1024 * 1024,
    )
    parser = adapter.parser()
    steps: list[ParsedStep] = []

    async def read() -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            steps.extend(parser.feed(raw.decode().rstrip("\n"), time.time()))

    async def write() -> None:
        if command.stdin is not None:
            assert process.stdin is not None
            process.stdin.write(command.stdin)
            await process.stdin.drain()
            process.stdin.close()

    assert process.stderr is not None
    try:
        await write()
        _, stderr, exit_code = await asyncio.wait_for(
            asyncio.gather(read(), process.stderr.read(), process.wait()), AGENT_TIMEOUT
        )
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    progress = [text for s in steps if (text := parser.progress_text(s)) is not None]
    return Run(exit_code, steps, parser.outcome(exit_code), progress, stderr.decode())


async def _trajectories(stack: TestStack, token: str, expected: int) -> list[dict[str, Any]]:
    """The collection's trajectories, once the projection holds ``expected`` completed."""
    url = f"{stack.base_url}/api/v1/trajectories?limit=50"
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(url, headers=headers) as response:
                assert response.status == 200, await response.text()
                page = await response.json()
            data: list[dict[str, Any]] = page["data"]
            done = [t for t in data if t["status"] == "completed"]
            if len(done) >= expected or time.monotonic() > deadline:
                return data
            await asyncio.sleep(0.2)


@pytest.mark.timeout(110)
async def test_codex_reads_csv_and_writes_summary(
    codex_stack: TestStack, upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.reset()
    token = await codex_stack.create_token("acme")
    workspace, home = tmp_path / "workspace", tmp_path / "home"
    (workspace / "uploads").mkdir(parents=True)
    home.mkdir()
    rng = random.Random()
    amounts = [rng.randint(1, 500) for _ in range(rng.randint(3, 9))]
    csv_text = "item,amount\n" + "".join(f"row{i},{a}\n" for i, a in enumerate(amounts))
    (workspace / INPUT_PATH).write_text(csv_text)
    upstream.respond_with(MODEL, codex_scenario(str(workspace)))
    spec = AgentSpec(
        model=MODEL,
        runbook="You are a careful data analyst. Write results under results/.",
        prompt=f"Summarise {INPUT_PATH} into {SUMMARY_PATH}.",
        gateway_url=codex_stack.base_url,
        token=token,
        workspace=str(workspace),
        home=str(home),
        agents_dir=AGENTS_DIR,
    )

    run = await _run_codex(spec)

    assert run.exit_code == 0, run.stderr
    summary = (workspace / SUMMARY_PATH).read_text()
    assert f"rows: {len(amounts)}\n" in summary
    assert f"amount total: {sum(amounts)}\n" in summary

    assert [(s.kind, s.tool_name) for s in run.steps] == [
        ("tool_call", "exec_command"),
        ("tool_result", "exec_command"),
        ("tool_call", "apply_patch"),
        ("tool_result", "apply_patch"),
        ("message", None),
    ]
    read_call, read_result, write_call, write_result, message = run.steps
    assert read_call.tool_input is not None
    assert shell_script(read_call.tool_input["command"]) == f"cat {workspace}/{INPUT_PATH}"
    assert read_result.text == csv_text and not read_result.is_error
    assert read_result.tool_call_id == read_call.tool_call_id
    assert read_result.started == read_call.started <= read_result.ended
    assert write_call.tool_input == {
        "changes": [{"path": str(workspace / SUMMARY_PATH), "kind": "add"}]
    }
    assert write_result.tool_call_id == write_call.tool_call_id and not write_result.is_error
    assert message.text == FINAL_TEXT
    assert run.progress[0] == f"→ $ cat {workspace}/{INPUT_PATH}"
    assert run.progress[-1] == FINAL_TEXT

    assert run.outcome.exit_code == 0 and run.outcome.result == FINAL_TEXT
    assert run.outcome.num_turns == 1
    reported = run.outcome.reported_usage

    # The runbook reached the model as codex's developer instructions.
    requests = [r.body for r in upstream.requests]
    assert len(requests) == 3
    for body in requests:
        texts = json.dumps(body["messages"])
        assert "You are a careful data analyst." in texts
        assert body["model"] == MODEL

    # Every model call went through the gateway and was recorded, with usage and cost.
    trajectories = await _trajectories(codex_stack, token, expected=3)
    assert len(trajectories) == 3
    assert {t["model"] for t in trajectories} == {MODEL}
    assert all(t["status"] == "completed" for t in trajectories)
    assert all(t["cost_usd"] > 0 for t in trajectories)
    prompt = sum(t["usage"]["prompt_tokens"] for t in trajectories)
    completion = sum(t["usage"]["completion_tokens"] for t in trajectories)
    assert reported["input_tokens"] == prompt > 0
    assert reported["output_tokens"] == completion > 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cause", ["upstream_refuses", "token_unknown"])
async def test_codex_exits_non_zero_when_the_gateway_refuses(
    codex_stack: TestStack, upstream: FakeUpstream, tmp_path: Path, cause: str
) -> None:
    """A refused model call ends the run at once (one retry at most), exit 1, with
    the refusal's message as the outcome's result."""
    upstream.reset()
    model = "gpt-4o-mini"
    upstream.script(
        model,
        Script(
            status=400,
            error_message="Invalid value for 'temperature': must be at most 2.",
            error_type="invalid_request_error",
            error_code="invalid_value",
        ),
    )
    token = "jt_not_a_token_of_ours" if cause == "token_unknown" else codex_stack.token
    workspace, home = tmp_path / "workspace", tmp_path / "home"
    workspace.mkdir()
    home.mkdir()
    spec = AgentSpec(
        model=model,
        runbook="Be brief.",
        prompt="Say hello.",
        gateway_url=codex_stack.base_url,
        token=token,
        workspace=str(workspace),
        home=str(home),
        agents_dir=AGENTS_DIR,
    )

    run = await _run_codex(spec)

    assert run.exit_code == 1, run.stderr
    assert run.steps == []
    assert run.outcome.exit_code == 1
    assert run.outcome.reported_usage == {}
    if cause == "upstream_refuses":
        assert run.outcome.result == "Invalid value for 'temperature': must be at most 2."
        assert 1 <= len(upstream.requests) <= 2
    else:
        assert run.outcome.result is not None and "401 Unauthorized" in run.outcome.result
        assert len(upstream.requests) == 0


@pytest.mark.timeout(60)
async def test_codex_reads_a_long_prompt_from_stdin(
    codex_stack: TestStack, upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.reset()
    model = "gpt-4.1"
    upstream.script(model, Script(text="Noted."))
    prompt = "Read all of this: " + " ".join(f"word{i}" for i in range(MAX_ARGV_PROMPT_BYTES // 4))
    workspace, home = tmp_path / "workspace", tmp_path / "home"
    workspace.mkdir()
    home.mkdir()
    spec = AgentSpec(
        model=model,
        runbook="Be brief.",
        prompt=prompt,
        gateway_url=codex_stack.base_url,
        token=codex_stack.token,
        workspace=str(workspace),
        home=str(home),
        agents_dir=AGENTS_DIR,
    )
    assert CodexAdapter().command(spec).stdin is not None

    run = await _run_codex(spec)

    assert run.exit_code == 0, run.stderr
    assert run.outcome.result == "Noted."
    [request] = upstream.requests
    users = [m["content"] for m in request.body["messages"] if m["role"] == "user"]
    assert users[-1] == prompt


@pytest.mark.timeout(60)
async def test_codex_reports_a_failing_read(
    codex_stack: TestStack, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """No input file: the read fails (a tool_result with is_error), the model says
    so, nothing is written, and codex itself still exits 0."""
    upstream.reset()
    workspace, home = tmp_path / "workspace", tmp_path / "home"
    workspace.mkdir()
    home.mkdir()
    upstream.respond_with(MODEL, codex_scenario(str(workspace)))
    spec = AgentSpec(
        model=MODEL,
        runbook="Write results under results/.",
        prompt=f"Summarise {INPUT_PATH}.",
        gateway_url=codex_stack.base_url,
        token=codex_stack.token,
        workspace=str(workspace),
        home=str(home),
        agents_dir=AGENTS_DIR,
    )

    run = await _run_codex(spec)

    assert run.exit_code == 0, run.stderr
    assert [s.kind for s in run.steps] == ["tool_call", "tool_result", "message"]
    failed = run.steps[1]
    assert failed.is_error and failed.text is not None
    assert "No such file or directory" in failed.text
    assert run.progress[1].startswith("✗ exec_command failed")
    assert run.outcome.result is not None and run.outcome.result.startswith(READ_FAILED)
    assert not (workspace / "results").exists()
