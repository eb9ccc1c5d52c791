"""The gemini-cli adapter: its stream parser over output captured from the real CLI
(tests/fixtures/agents/gemini_cli*.jsonl), its command, and the real ``gemini``
binary end to end against our gateway, with the Gemini fake behind it playing a
read → summarise → write conversation (tests/fakes/scenario_gemini_cli.py)."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from jetty_cli.testing import StackFactory, TestStack
from services.runner.agents.base import (
    AgentAdapter,
    AgentCommand,
    AgentSpec,
    ParsedStep,
    StreamParser,
)
from services.runner.agents.gemini_cli import (
    MAX_RESULT_CHARS,
    RUNBOOK_PATH,
    SETTINGS_PATH,
    GeminiCliAdapter,
    GeminiCliParser,
)
from shared.events.runbook import AgentOutcome
from tests.fakes.gemini_upstream import FakeGemini
from tests.fakes.scenario_gemini_cli import (
    DATA_PATH,
    FINAL_PREFIX,
    MISSING_PATH,
    PREFACE,
    SUMMARY_PATH,
    ReadSummarizeWrite,
    summarize_csv,
)

ROOT = Path(__file__).resolve().parent.parent
AGENTS_DIR = ROOT / "agents"
GEMINI_BIN = AGENTS_DIR / "node_modules" / ".bin" / "gemini"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "agents"
GEMINI_KEY = "gem-agent-test-1"
MODEL = "gemini-2.5-pro"
RUN_TIMEOUT = 60.0
RUNBOOK = "You are a data clerk. Summaries go to results/summary.md."
CSV = "region,units,revenue\nnorth,12,340.50\nsouth,7,99.25\neast,30,1200\n"


def fixture_lines(name: str) -> list[str]:
    return (FIXTURES / name).read_text().splitlines()


def parse(lines: list[str]) -> tuple[GeminiCliParser, list[ParsedStep]]:
    parser = GeminiCliAdapter().parser()
    steps: list[ParsedStep] = []
    for n, line in enumerate(lines):
        steps += parser.feed(line, now=1000.0 + n)
    return parser, steps


def spec(**overrides: Any) -> AgentSpec:
    values: dict[str, Any] = {
        "model": MODEL,
        "runbook": "You summarise data files.",
        "prompt": "Summarise the data.",
        "gateway_url": "http://127.0.0.1:18080",
        "token": "jt_run_token_123",
        "workspace": "/workspace",
        "home": "/home/agent",
        "agents_dir": "/opt/agents",
        **overrides,
    }
    return AgentSpec(**values)


# --- the parser over captured output ------------------------------------------------------


def test_parser_reads_every_step_kind_of_a_captured_run() -> None:
    _, steps = parse(fixture_lines("gemini_cli.jsonl"))
    assert [s.kind for s in steps] == [
        "message",
        "tool_call",
        "tool_result",
        "message",
        "tool_call",
        "tool_result",
        "tool_call",
        "tool_result",
        "message",
    ]
    first = steps[0]
    assert first.text == PREFACE  # six delta pieces joined into one message
    assert (first.started, first.ended) == (1002.0, 1007.0)
    calls = [s for s in steps if s.kind == "tool_call"]
    assert [c.tool_name for c in calls] == ["read_file", "read_file", "write_file"]
    assert calls[0].tool_input == {"file_path": f"/workspace/{MISSING_PATH}"}
    assert calls[1].tool_input == {"file_path": f"/workspace/{DATA_PATH}"}
    assert calls[2].tool_input == {
        "file_path": f"/workspace/{SUMMARY_PATH}",
        "content": "# Summary\n\nrows: 2\nsum of qty: 8\nsum of price: 3.75\n",
    }
    results = [s for s in steps if s.kind == "tool_result"]
    assert [r.tool_call_id for r in results] == [c.tool_call_id for c in calls]
    assert all(r.tool_call_id for r in results)
    # a tool result starts when its call was issued
    assert [r.started for r in results] == [c.started for c in calls]
    assert all(r.ended > r.started for r in results)
    assert steps[-1].text == f"{FINAL_PREFIX} (/workspace/{SUMMARY_PATH})."


def test_parser_marks_a_failing_tool() -> None:
    _, steps = parse(fixture_lines("gemini_cli.jsonl"))
    failed, read, written = [s for s in steps if s.kind == "tool_result"]
    assert failed.is_error and failed.text == "File not found."
    assert not read.is_error and read.text == ""  # read_file shows no display text
    assert not written.is_error and written.text == ""  # write_file: no output field


def test_parser_outcome_of_a_captured_run() -> None:
    parser, _ = parse(fixture_lines("gemini_cli.jsonl"))
    outcome = parser.outcome(0)
    assert outcome == AgentOutcome(
        result=f"{FINAL_PREFIX} (/workspace/{SUMMARY_PATH}).",
        exit_code=0,
        num_turns=4,
        reported_usage={
            "input_tokens": 1378,
            "output_tokens": 115,
            "total_tokens": 1493,
            "cached": 0,
            "input": 1378,
            "tool_calls": 3,
        },
    )


def test_parser_outcome_of_a_failed_run() -> None:
    parser, steps = parse(fixture_lines("gemini_cli_error.jsonl"))
    assert steps == []
    outcome = parser.outcome(144)
    assert outcome.exit_code == 144
    assert outcome.result is not None and "API key not valid" in outcome.result
    assert outcome.num_turns is None
    assert outcome.reported_usage["total_tokens"] == 0


def test_parser_ignores_garbage_and_unknown_events() -> None:
    lines = fixture_lines("gemini_cli.jsonl")
    noisy: list[str] = []
    for line in lines:
        noisy += [line, "", "Loaded cached credentials.", "{not json", "[1, 2]", "null"]
    noisy += [
        json.dumps({"type": "something_new", "x": 1}),
        json.dumps({"type": "tool_use", "tool_name": 3, "parameters": "oops"}),
        json.dumps({"type": "tool_result", "tool_id": None, "status": "error", "error": 5}),
        json.dumps({"type": "message", "role": "assistant", "content": None}),
        json.dumps({"type": "result", "stats": {"total_tokens": "many", "output_tokens": True}}),
        json.dumps({"no": "type"}),
    ]
    _, clean_steps = parse(lines)
    parser, steps = parse(noisy)
    kinds = [s.kind for s in steps]
    # the clean run's steps, then the two malformed tool events, read defensively
    assert kinds[: len(clean_steps)] == [s.kind for s in clean_steps]
    assert [(s.text, s.tool_input) for s in steps[: len(clean_steps)]] == [
        (s.text, s.tool_input) for s in clean_steps
    ]
    odd_call, odd_result = steps[len(clean_steps) :]
    assert odd_call.kind == "tool_call" and odd_call.tool_name is None
    assert odd_call.tool_input == {}
    assert odd_result.kind == "tool_result" and odd_result.is_error
    assert parser.outcome(0).reported_usage == {}


def test_parser_truncates_long_tool_output() -> None:
    parser = GeminiCliParser()
    parser.feed(json.dumps({"type": "tool_use", "tool_name": "x", "tool_id": "t1"}), 1.0)
    (step,) = parser.feed(
        json.dumps(
            {"type": "tool_result", "tool_id": "t1", "status": "success", "output": "a" * 50_000}
        ),
        2.0,
    )
    assert step.text == "a" * MAX_RESULT_CHARS
    assert (step.started, step.ended) == (1.0, 2.0)


def test_parser_keeps_an_unfinished_answer_as_the_result() -> None:
    parser = GeminiCliParser()
    for piece in ("half ", "an answer"):
        line = {"type": "message", "role": "assistant", "content": piece, "delta": True}
        assert parser.feed(json.dumps(line), 1.0) == []
    outcome = parser.outcome(None)
    assert outcome.result == "half an answer" and outcome.num_turns == 1


def test_progress_text() -> None:
    parser, steps = parse(fixture_lines("gemini_cli.jsonl"))
    texts = [parser.progress_text(s) for s in steps]
    assert texts[0] == PREFACE
    assert texts[1] == f"→ read_file /workspace/{MISSING_PATH}"
    assert texts[2] == "✗ tool error: File not found."
    assert texts[6] == f"→ write_file /workspace/{SUMMARY_PATH}"
    assert texts[7] == "✓ tool result (0 bytes)"


# --- the command ----------------------------------------------------------------------------


def test_command_argv_env_and_home_files() -> None:
    adapter: AgentAdapter = GeminiCliAdapter()  # the port, checked by mypy
    parser: StreamParser = adapter.parser()
    assert adapter.name == "gemini-cli" and isinstance(parser, GeminiCliParser)
    command = adapter.command(spec())
    bin_dir = "/opt/agents/node_modules/.bin"
    assert command.argv == [
        f"{bin_dir}/gemini",
        "--model",
        MODEL,
        "--approval-mode",
        "yolo",
        "--output-format",
        "stream-json",
        "--prompt",
        "Summarise the data.",
    ]
    assert command.env == {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": "/home/agent",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "GOOGLE_GEMINI_BASE_URL": "http://127.0.0.1:18080",
        "GEMINI_API_KEY": "jt_run_token_123",
        "GEMINI_CLI_TRUST_WORKSPACE": "true",
        "GEMINI_CLI_NO_RELAUNCH": "true",
        "NO_COLOR": "1",
        "GEMINI_SYSTEM_MD": f"/home/agent/{RUNBOOK_PATH}",
    }
    assert command.stdin is None
    assert command.home_files[RUNBOOK_PATH] == b"You summarise data files."
    settings = json.loads(command.home_files[SETTINGS_PATH])
    assert settings["security"]["auth"]["selectedType"] == "gemini-api-key"
    assert settings["privacy"]["usageStatisticsEnabled"] is False
    assert settings["telemetry"]["enabled"] is False


def test_command_takes_nothing_from_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_API_KEY", "host-secret")
    monkeypatch.setenv("GEMINI_API_KEY", "host-secret")
    command = GeminiCliAdapter().command(spec())
    assert "host-secret" not in json.dumps([command.argv, command.env])
    assert not {"GOOGLE_API_KEY", "GOOGLE_APPLICATION_CREDENTIALS"} & set(command.env)


def test_command_without_runbook_keeps_the_cli_prompt() -> None:
    command = GeminiCliAdapter().command(spec(runbook="  "))
    assert "GEMINI_SYSTEM_MD" not in command.env
    assert set(command.home_files) == {SETTINGS_PATH}


# --- end to end: the real CLI through the gateway --------------------------------------------


@dataclass
class Run:
    exit_code: int
    steps: list[ParsedStep]
    outcome: AgentOutcome
    stderr: str


@pytest.fixture(scope="module")
async def gemini() -> AsyncIterator[FakeGemini]:
    fake = FakeGemini(api_key=GEMINI_KEY)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture(scope="module")
def gemini_stack(stack_factory: StackFactory, gemini: FakeGemini) -> Iterator[TestStack]:
    """The platform with the Gemini fake behind ``gemini-*`` names; stopped after
    this module (nothing else uses it)."""
    stack = stack_factory(env={"GEMINI_API_KEY": GEMINI_KEY, "GEMINI_BASE_URL": gemini.base_url})
    yield stack
    stack.close()


def write_home_files(home: Path, command: AgentCommand) -> None:
    for relative, data in command.home_files.items():
        path = home / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


async def run_agent(command: AgentCommand, workspace: Path) -> Run:
    parser = GeminiCliAdapter().parser()
    proc = await asyncio.create_subprocess_exec(
        *command.argv,
        cwd=workspace,
        env=command.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    steps: list[ParsedStep] = []

    async def read_stdout() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            steps.extend(parser.feed(raw.decode(errors="replace").rstrip("\n"), time.time()))

    try:
        _, stderr = await asyncio.wait_for(
            asyncio.gather(read_stdout(), proc.stderr.read()), RUN_TIMEOUT
        )
        exit_code = await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return Run(exit_code, steps, parser.outcome(exit_code), stderr.decode(errors="replace"))


async def get_json(
    stack: TestStack, path: str, token: str, params: dict[str, str] | None = None
) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{stack.base_url}{path}", params=params, headers={"Authorization": f"Bearer {token}"}
        ) as response,
    ):
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


async def run_conversation(
    stack: TestStack, fake: FakeGemini, tmp_path: Path, *, missing_first: bool = False
) -> tuple[Run, Path, str]:
    """The real CLI in a fresh workspace and home against ``stack``, ``fake`` playing
    :class:`ReadSummarizeWrite`; returns the run, the workspace and the run's token."""
    assert GEMINI_BIN.exists(), "run `make agents/node_modules/.installed`"
    fake.reset()
    workspace, home = tmp_path / "workspace", tmp_path / "home"
    (workspace / "uploads").mkdir(parents=True)
    home.mkdir()
    (workspace / DATA_PATH).write_text(CSV)
    fake.respond_with(MODEL, ReadSummarizeWrite(str(workspace), missing_first=missing_first))
    token = await stack.create_token(f"gemini-cli-{secrets.token_hex(4)}")
    command = GeminiCliAdapter().command(
        AgentSpec(
            model=MODEL,
            runbook=RUNBOOK,
            prompt="Summarise uploads/data.csv.",
            gateway_url=stack.base_url,
            token=token,
            workspace=str(workspace),
            home=str(home),
            agents_dir=str(AGENTS_DIR),
        )
    )
    write_home_files(home, command)
    return await run_agent(command, workspace), workspace, token


async def recorded_calls(stack: TestStack, token: str) -> list[dict[str, Any]]:
    page = await get_json(stack, "/api/v1/trajectories", token, {"limit": "50"})
    data: list[dict[str, Any]] = page["data"]
    return data


@pytest.mark.timeout(100)
async def test_real_cli_reads_summarises_and_writes_through_the_gateway(
    gemini_stack: TestStack, gemini: FakeGemini, tmp_path: Path
) -> None:
    run, workspace, token = await run_conversation(gemini_stack, gemini, tmp_path)

    assert run.exit_code == 0, run.stderr[-3000:]
    assert (workspace / SUMMARY_PATH).read_text() == summarize_csv(CSV)
    assert "rows: 3" in summarize_csv(CSV) and "sum of units: 49" in summarize_csv(CSV)
    kinds = [s.kind for s in run.steps]
    assert kinds == ["message", "tool_call", "tool_result", "tool_call", "tool_result", "message"]
    read_call, write_call = (s for s in run.steps if s.kind == "tool_call")
    assert read_call.tool_name == "read_file"
    assert read_call.tool_input == {"file_path": str(workspace / DATA_PATH)}
    assert write_call.tool_name == "write_file"
    assert write_call.tool_input == {
        "file_path": str(workspace / SUMMARY_PATH),
        "content": summarize_csv(CSV),
    }
    results = [s for s in run.steps if s.kind == "tool_result"]
    assert [r.tool_call_id for r in results] == [read_call.tool_call_id, write_call.tool_call_id]
    assert not any(r.is_error for r in results)
    final = f"{FINAL_PREFIX} ({workspace / SUMMARY_PATH})."
    assert run.steps[-1].text == final
    assert run.outcome.result == final and run.outcome.exit_code == 0
    assert run.outcome.num_turns == 3
    assert run.outcome.reported_usage["output_tokens"] > 0
    # the CLI leaves nothing of its own in the workspace (all of it becomes artifacts)
    files = {str(p.relative_to(workspace)) for p in workspace.rglob("*") if p.is_file()}
    assert files == {DATA_PATH, SUMMARY_PATH}

    # what reached the provider: the runbook as the system instruction, our key
    upstream = [r for r in gemini.requests if r.path.endswith(f"{MODEL}:streamGenerateContent")]
    assert len(upstream) == 3
    assert all(r.headers.get("x-goog-api-key") == GEMINI_KEY for r in upstream)
    system = upstream[0].body["systemInstruction"]["parts"]
    assert RUNBOOK in "".join(p.get("text", "") for p in system)

    # the gateway recorded each model call, with usage
    trajectories = await recorded_calls(gemini_stack, token)
    assert len(trajectories) == 3
    assert {t["model"] for t in trajectories} == {MODEL}
    assert all(t["status"] == "completed" for t in trajectories)
    for t in trajectories:
        usage = t["usage"]
        assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    reported_total = run.outcome.reported_usage["total_tokens"]
    assert sum(t["usage"]["total_tokens"] for t in trajectories) == reported_total
    one = await get_json(
        gemini_stack, f"/api/v1/trajectories/{trajectories[0]['trajectory_id']}", token
    )
    assert [step["ingress"] for step in one["steps"]] == ["gemini"]


@pytest.mark.timeout(100)
async def test_real_cli_recovers_from_a_failing_tool(
    gemini_stack: TestStack, gemini: FakeGemini, tmp_path: Path
) -> None:
    run, workspace, token = await run_conversation(
        gemini_stack, gemini, tmp_path, missing_first=True
    )

    assert run.exit_code == 0, run.stderr[-3000:]
    assert (workspace / SUMMARY_PATH).read_text() == summarize_csv(CSV)
    calls = [s for s in run.steps if s.kind == "tool_call"]
    results = [s for s in run.steps if s.kind == "tool_result"]
    assert [c.tool_input and c.tool_input["file_path"] for c in calls] == [
        str(workspace / MISSING_PATH),
        str(workspace / DATA_PATH),
        str(workspace / SUMMARY_PATH),
    ]
    assert [r.is_error for r in results] == [True, False, False]
    assert results[0].text == "File not found."
    assert run.outcome.num_turns == 4
    # the failure went back to the model as a function response with an error
    last = gemini.requests[-1].body["contents"]
    errors = [
        part["functionResponse"]["response"]
        for content in last
        for part in content["parts"]
        if "functionResponse" in part and "error" in part["functionResponse"]["response"]
    ]
    assert len(errors) == 1 and MISSING_PATH in str(errors[0])
    assert len(await recorded_calls(gemini_stack, token)) == 4
