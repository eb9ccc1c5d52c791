"""Evaluations end to end: the real claude-code in the real sandbox writes an answer,
a command check and a rubric judged by a model (through the gateway, recorded as a
step) evaluate it, and a failed round retries the agent with the feedback — on a
real stack, the agent's and the judge's calls answered by the scripted Anthropic
fake. The first attempt writes ``draft``, an attempt told it failed writes
``final``; both checks want ``final``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from openai import AsyncOpenAI

from jetty_cli.testing import StackFactory, TestStack, call
from tests.fakes.anthropic_upstream import FakeAnthropic, Script
from tests.fakes.scenario_claude_code import tool_results
from tests.helpers import anthropic_env, fake_anthropic_fixture

pytestmark = pytest.mark.timeout(300)

KEY = "sk-ant-eval-test"
MODEL = "claude-sonnet-4-6"
ANSWER = "results/answer.txt"
RUNBOOK = f"""---
primary_outputs: [{ANSWER}]
evaluation:
  max_rounds: {{rounds}}
  checks:
    - name: says-final
      command: grep -q final {ANSWER}
    - name: judge
      rubric: The answer file says final.
      threshold: 0.5
---
Write {ANSWER}.
"""


class DraftThenFinal:
    def __call__(self, body: Any) -> Script:
        body = body if isinstance(body, dict) else {}
        if "You grade the work" in str(body.get("system")):
            final = f"--- {ANSWER} ---\\nfinal" in json.dumps(body.get("messages"))
            verdict = {"score": 0.9, "feedback": ""} if final else {
                "score": 0.2, "feedback": "The answer must say final."}  # fmt: skip
            return Script(text=json.dumps(verdict))
        results = tool_results(body)
        if "Write" in results:
            return Script(text="Done.")
        retry = "did not pass its evaluation" in json.dumps(body.get("messages"))
        if retry and "Read" not in results:  # claude-code writes a file only once read
            read = {"file_path": f"/workspace/{ANSWER}"}
            return Script(tool_calls=[("Read", orjson.dumps(read).decode())])
        write = {"file_path": f"/workspace/{ANSWER}", "content": "final\n" if retry else "draft\n"}
        return Script(tool_calls=[("Write", orjson.dumps(write).decode())])


anthropic = fake_anthropic_fixture(KEY)


@pytest.fixture(scope="module")
def evals(stack_factory: StackFactory, anthropic: FakeAnthropic) -> Iterator[TestStack]:
    stack = stack_factory(env=anthropic_env(anthropic, KEY))
    yield stack
    stack.close()


async def _run(stack: TestStack, rounds: int) -> tuple[dict[str, Any], str]:
    """The runbook is read from a stored file (``jetty.runbook_path``)."""
    files = AsyncOpenAI(base_url=stack.base_url + "/api/v1", api_key=stack.token, max_retries=0)
    runbook = await files.files.create(
        file=("eval.md", RUNBOOK.replace("{rounds}", str(rounds)).encode()), purpose="runbook"
    )
    await files.close()
    client = AsyncOpenAI(base_url=stack.base_url + "/v1", api_key=stack.token, max_retries=0)
    content, last = "", {}
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Go."}],
        stream=True,
        timeout=240,
        extra_body={"jetty": {"runbook": True, "task": "evals", "runbook_path": runbook.id}},
    )
    async for chunk in stream:
        content += "".join(c.delta.content or "" for c in chunk.choices)
        last = (chunk.model_extra or {}).get("jetty_metadata") or last
    await client.close()
    return last, content


async def test_a_failed_round_retries_the_agent_with_the_feedback(
    evals: TestStack, anthropic: FakeAnthropic
) -> None:
    anthropic.respond_with(MODEL, DraftThenFinal())
    final, content = await _run(evals, rounds=3)
    assert final["status"] == "completed", final["error"]
    evaluation = final["evaluation"]
    assert evaluation["verdict"] == "passed" and evaluation["rounds"] == 2
    first, second = evaluation["history"]
    assert first["passed"] is False and first["will_retry"] is True
    checks = {c["name"]: c for c in first["checks"]}
    assert checks["says-final"]["kind"] == "command" and checks["says-final"]["exit_code"] == 1
    assert checks["judge"]["score"] == pytest.approx(0.2)
    assert checks["judge"]["feedback"] == "The answer must say final."
    assert second["passed"] is True and second["will_retry"] is False
    assert {c["name"]: c["passed"] for c in second["checks"]} == {"says-final": True, "judge": True}
    assert "Evaluation round 1: failed, retrying" in content
    assert "Evaluation round 2: passed" in content

    # The retry was told why, and its file is the artifact.
    told = [r for r in anthropic.requests if "did not pass its evaluation" in json.dumps(r.body)]
    assert told and "The answer must say final." in json.dumps(told[0].body)
    [answer] = [a for a in final["primary_outputs"] if a["path"] == ANSWER]
    status, _, view = call(evals.base_url + f"/api/v1/trajectories/{final['trajectory_id']}",
                           evals.token)  # fmt: skip
    assert status == 200
    assert view["runbook"]["evaluation"]["verdict"] == "passed"
    assert view["runbook"]["evaluation"]["rounds"] == 2
    assert view["primary_outputs"][0]["sha256"] == answer["sha256"]
    # The judge's two calls are completion steps of the run.
    judged = [s for s in view["steps"] if s["kind"] == "completion"
              and "You grade the work" in json.dumps(s["request"])]  # fmt: skip
    assert len(judged) == 2


async def test_the_last_round_decides_the_verdict(
    evals: TestStack, anthropic: FakeAnthropic
) -> None:
    anthropic.respond_with(MODEL, DraftThenFinal())
    final, _ = await _run(evals, rounds=1)
    assert final["status"] == "completed"  # the agent did finish: its work failed the checks
    assert final["evaluation"]["verdict"] == "failed" and final["evaluation"]["rounds"] == 1
    assert final["evaluation"]["history"][0]["will_retry"] is False


@pytest.mark.parametrize(
    "evaluation",
    [
        {"checks": []},
        {"checks": [{"name": "x"}]},
        {"checks": [{"name": "x", "command": "true", "rubric": "r"}]},
        {"checks": [{"name": "x", "command": "true"}], "max_rounds": 0},
        {"checks": [{"name": "x", "command": "true"}], "colour": "red"},
    ],
)
def test_bad_evaluations_are_400(evals: TestStack, evaluation: dict[str, Any]) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Go."}],
        "jetty": {"runbook": True, "evaluation": evaluation},
    }
    status, _, doc = call(evals.base_url + "/v1/chat/completions", evals.token, body)
    assert status == 400, doc
    assert (
        doc["error"]["param"] == "jetty.evaluation" and doc["error"]["code"] == "invalid_evaluation"
    )
