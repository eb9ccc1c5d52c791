"""A run's evaluation: checks after the agent, and retry rounds with feedback.

After the agent of a round exits 0 (and was not stopped), each check of the
runbook's ``evaluation`` runs:

* ``command``: ``sh -c <command>`` in a fresh sandbox of the same backend and
  limits over the same files (the run's inputs with the artifacts so far on top),
  without the agent's token or secrets; it passes on exit code 0; its output (stdout
  then stderr's tail, clipped) is recorded;
* ``rubric``: a judge model, called through the gateway with the run's own token —
  so the call is a completion step of the trajectory and counts against the budget —
  is given the rubric, the agent's final answer and the primary outputs (or every
  artifact), and answers ``{"score": 0..1, "feedback": "..."}``; it passes at the
  check's ``threshold``.

Each round is one ``runbook.evaluated`` event. If a check failed and rounds are
left, the agent runs again — a fresh sandbox over the same files — with its prompt
followed by the failed checks' feedback; the run ends after the last round either
way (its status says how the agent ended; the verdict is the last round's).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp

from services.runner.agents.base import AgentCommand, AgentSpec, clip_output
from services.runner.sandbox.base import InputFile, SandboxError, SandboxExit
from shared.events.runbook import (
    AgentOutcome,
    CheckResult,
    EvaluationCheck,
    EvaluationSpec,
    RunbookEvaluated,
)
from shared.objectstore import ObjectStore, ObjectStoreError

if TYPE_CHECKING:
    from services.runner.run import Run

log = logging.getLogger(__name__)

OUTPUT_BYTES = 16 * 1024
JUDGE_FILE_BYTES = 16 * 1024
JUDGE_MAX_FILES = 8
JUDGE_TIMEOUT = 300.0
JUDGE_SYSTEM = (
    "You grade the work of a coding agent against a rubric. Reply with one JSON "
    'object and nothing else: {"score": <a number from 0 to 1>, "feedback": "<what is '
    'missing or wrong, addressed to the agent; empty when nothing is>"}.'
)
_JSON_OBJECT = re.compile(r"\{.*\}", re.S)


class Evaluation:
    def __init__(self, run: Run, spec: EvaluationSpec, token: str) -> None:
        self.run = run
        self.spec = spec
        self.token = token
        self._store: ObjectStore | None = None

    # --- the rounds -----------------------------------------------------------------

    async def rounds(
        self, result: SandboxExit, outcome: AgentOutcome
    ) -> tuple[SandboxExit, AgentOutcome]:
        """Evaluate, retrying the agent while a round fails and rounds are left; the
        last agent's exit and outcome."""
        round_no = 1
        while True:
            if self.run.stop_reason is not None or result.timed_out or result.exit_code != 0:
                return result, outcome
            await self._close_sandbox()
            checks = [await self._check(check, outcome) for check in self.spec.checks]
            passed = all(c.passed for c in checks)
            retry = not passed and round_no < self.spec.max_rounds
            retry = retry and self.run.stop_reason is None
            await self.run.deps.publisher.publish(
                self.run.collection,
                self.run.trajectory_id,
                RunbookEvaluated(task=self.run.event.task, round=round_no, passed=passed,
                                 checks=checks, will_retry=retry,
                                 evaluated_at=datetime.now(UTC)),
            )  # fmt: skip
            if not retry:
                return result, outcome
            round_no += 1
            result, outcome = await self._agent_again(checks, round_no)

    async def _close_sandbox(self) -> None:
        if self.run.sandbox is not None:
            with contextlib.suppress(Exception):
                await self.run.sandbox.destroy()

    def _inputs(self) -> list[InputFile]:
        """The run's inputs with the artifacts so far over them."""
        spec = self.run.spec
        assert spec is not None
        made = self.run.outputs
        kept = [i for i in spec.inputs if i.path not in made]
        return kept + [InputFile(path, key) for path, key in sorted(made.items())]

    async def _agent_again(
        self, checks: list[CheckResult], round_no: int
    ) -> tuple[SandboxExit, AgentOutcome]:
        run = self.run
        failed = [c for c in checks if not c.passed]
        notes = "\n".join(f"- {c.name}: {c.feedback or c.output or 'failed'}" for c in failed)
        prompt = (
            f"{run.event.prompt}\n\nYour previous attempt did not pass its evaluation "
            f"(round {round_no - 1} of {self.spec.max_rounds}):\n{notes}\n\n"
            "Your files are in the workspace. Fix the work so that it passes."
        )
        adapter = run.deps.adapters[run.event.agent]
        layout = run.deps.backend.layout
        command = adapter.command(
            AgentSpec(model=run.event.model, runbook=run.event.runbook, prompt=prompt,
                      gateway_url=layout.gateway_url, token=self.token,
                      workspace=layout.workspace, home=layout.home,
                      agents_dir=layout.agents_dir)
        )  # fmt: skip
        command = run.secret_scope.apply(command)
        assert run.spec is not None
        spec = dataclasses.replace(run.spec, command=command, inputs=self._inputs())
        try:
            run.sandbox = await run.deps.backend.start(spec)
        except SandboxError as exc:
            log.warning("run %s: retry sandbox did not start: %s", run.trajectory_id, exc)
            return SandboxExit(exit_code=None, stderr_tail=str(exc)), AgentOutcome()
        parser = adapter.parser()
        watcher = asyncio.create_task(run.watch_state(), name=f"watch-{run.trajectory_id}")
        try:
            await run.pump(run.sandbox, parser)
            result = await run.sandbox.wait()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        outcome = parser.outcome(result.exit_code)
        await run.store_artifacts(run.sandbox)
        return result, outcome

    # --- checks ---------------------------------------------------------------------

    async def _check(self, check: EvaluationCheck, outcome: AgentOutcome) -> CheckResult:
        started = time.monotonic()
        try:
            if check.command is not None:
                found = await self._command(check, check.command)
            else:
                found = await self._judge(check, outcome)
        except Exception as exc:  # a check that cannot run fails, it does not lose the run
            log.warning("run %s: check %s failed to run: %r", self.run.trajectory_id,
                        check.name, exc)  # fmt: skip
            found = {"passed": False, "output": f"the check could not run: {exc}"}
        kind = "command" if check.command is not None else "rubric"
        return CheckResult(name=check.name, kind=kind,
                           duration_ms=round((time.monotonic() - started) * 1000, 3),
                           **found)  # fmt: skip

    async def _command(self, check: EvaluationCheck, command: str) -> dict[str, Any]:
        run = self.run
        assert run.spec is not None
        layout = run.deps.backend.layout
        env = {"PATH": "/usr/bin:/bin", "HOME": layout.home, "LANG": "C.UTF-8", "TMPDIR": "/tmp"}
        limits = dataclasses.replace(run.spec.limits, timeout_s=check.timeout_s)
        spec = dataclasses.replace(
            run.spec,
            command=AgentCommand(argv=["/bin/sh", "-c", command], env=env),
            inputs=self._inputs(),
            limits=limits,
        )
        sandbox = await run.deps.backend.start(spec)
        try:
            lines: list[str] = []
            async for line in sandbox.lines():
                if sum(len(x) for x in lines) < OUTPUT_BYTES:
                    lines.append(line)
            exit_info = await sandbox.wait()
        finally:
            await sandbox.destroy()
        output = "\n".join(lines)
        if exit_info.stderr_tail:
            output += ("\n" if output else "") + exit_info.stderr_tail
        output = clip_output(output, OUTPUT_BYTES)
        passed = exit_info.exit_code == 0 and not exit_info.timed_out
        feedback = None
        if not passed:
            how = "timed out" if exit_info.timed_out else f"exited {exit_info.exit_code}"
            feedback = f"`{command}` {how}" + (f": {output.strip()[-2000:]}" if output else "")
        return {"passed": passed, "exit_code": exit_info.exit_code, "output": output or None,
                "feedback": feedback}  # fmt: skip

    async def _files(self) -> str:
        run = self.run
        if self._store is None:
            self._store = ObjectStore.from_settings(run.deps.settings)
        wanted = run.event.primary_outputs or sorted(run.outputs)
        parts = []
        for path in wanted[:JUDGE_MAX_FILES]:
            key = run.outputs.get(path)
            if key is None:
                parts.append(f"--- {path} ---\n(not written)")
                continue
            try:
                raw = await self._store.get(key)
            except ObjectStoreError as exc:
                parts.append(f"--- {path} ---\n(unreadable: {exc})")
                continue
            parts.append(f"--- {path} ---\n" + clip_output(raw.decode("utf-8", "replace"),
                                                         JUDGE_FILE_BYTES))  # fmt: skip
        return "\n\n".join(parts) or "(no files)"

    async def _judge(self, check: EvaluationCheck, outcome: AgentOutcome) -> dict[str, Any]:
        run = self.run
        user = (
            f"Rubric:\n{check.rubric}\n\nThe agent's final answer:\n{outcome.result or '(none)'}"
            f"\n\nThe files it produced:\n{await self._files()}"
        )
        body = {
            "model": check.model or run.event.model,
            "messages": [{"role": "system", "content": JUDGE_SYSTEM},
                         {"role": "user", "content": user}],
            "temperature": 0,
        }  # fmt: skip
        url = run.deps.settings.runner_gateway_url.rstrip("/") + "/v1/chat/completions"
        timeout = aiohttp.ClientTimeout(total=JUDGE_TIMEOUT)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, json=body, headers={"Authorization": f"Bearer {self.token}"}) as r,
        ):
            doc = await r.json(content_type=None)
        if r.status != 200:
            message = (doc.get("error") or {}).get("message") if isinstance(doc, dict) else None
            return {"passed": False, "output": f"the judge call failed ({r.status}): {message}"}
        answer = str(doc["choices"][0]["message"].get("content") or "")
        score, feedback = _verdict(answer)
        if score is None:
            return {"passed": False, "output": clip_output(answer, OUTPUT_BYTES),
                    "feedback": "The judge's answer could not be read."}  # fmt: skip
        passed = score >= check.threshold
        return {"passed": passed, "score": score, "output": clip_output(answer, OUTPUT_BYTES),
                "feedback": None if passed else (feedback or f"score {score:g} is below "
                                                  f"{check.threshold:g}")}  # fmt: skip


def _verdict(answer: str) -> tuple[float | None, str | None]:
    match = _JSON_OBJECT.search(answer)
    if match is None:
        return None, None
    try:
        doc = json.loads(match.group(0))
        score = float(doc["score"])
    except (ValueError, KeyError, TypeError):
        return None, None
    feedback = doc.get("feedback")
    return min(max(score, 0.0), 1.0), str(feedback) if feedback else None
