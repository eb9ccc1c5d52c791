"""One runbook run, from its ``runbook.requested`` event to its end event.

The steps, in order: claim the run in its live state (pending → running; a run
already ``running`` means its runner died: it is failed with ``runner_lost``, not
resumed), mint the agent's run-scoped token, start the sandbox with the agent's
command, turn the agent's output into ``runbook.step`` events while watching for a
cancel or a refused model call, then store the files it made as artifacts,
publish the end event, and revoke the token. Every way out — including errors of
our own — ends the run with exactly one end event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nats.errors import Error as NatsError

from services.runner.agents.base import AgentAdapter, AgentSpec, ParsedStep, StreamParser
from services.runner.bounds import bound_outcome, bound_step, clip
from services.runner.evaluation import Evaluation
from services.runner.run_limits import artifacts_incomplete, resource_exhausted, run_limits
from services.runner.sandbox.base import (
    ArtifactError,
    InputFile,
    Limits,
    Sandbox,
    SandboxBackend,
    SandboxError,
    SandboxExit,
    SandboxSpec,
)
from services.runner.secrets import RunSecretScope, SecretsUnavailable
from services.runner.settings import RunnerSettings
from shared import metrics, tracing
from shared.bus import EventPublisher
from shared.events.completion import ErrorRecord
from shared.events.runbook import (
    TERMINAL_STATUSES,
    AgentOutcome,
    ArtifactStored,
    RunbookCancelled,
    RunbookCompleted,
    RunbookFailed,
    RunbookRequested,
    RunbookStarted,
    RunbookStep,
)
from shared.runs import RunNotFound, RunState, RunStates
from shared.secrets import RunSecrets
from shared.tokens import TokenStore, generate_token, hash_token

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunDeps:
    settings: RunnerSettings
    runner: str
    publisher: EventPublisher
    runs: RunStates
    tokens: TokenStore
    backend: SandboxBackend
    adapters: dict[str, AgentAdapter]
    #: sealed run secrets (None: no JETTY_SECRETS_KEY; runs with secrets then fail)
    secrets: RunSecrets | None = None


class _Skip(Exception):
    """The run is not ours to start (already ended, or being cancelled)."""

    def __init__(self, state: RunState) -> None:
        super().__init__(state.status)
        self.state = state


def _error(status: int, error_type: str, code: str, message: str) -> ErrorRecord:
    return ErrorRecord(status=status, type=error_type, code=code, message=message)


def _now() -> datetime:
    return datetime.now(UTC)


class Run:
    def __init__(self, deps: RunDeps, trajectory_id: str, collection: str, event: RunbookRequested):
        self.deps = deps
        self.trajectory_id = trajectory_id
        self.collection = collection
        self.event = event
        self._span: Any = None  # the invoke_agent span, when tracing
        self.sandbox: Sandbox | None = None
        self.limits: Limits | None = None
        #: files of the agent that could not be stored (the run then fails)
        self.lost_artifacts: list[ArtifactError] = []
        self.stop_reason: str | None = None  # "cancel" | "budget" | "superseded"
        self.agent_started_at: datetime | None = None
        self._stopped = asyncio.Event()
        self.secret_scope = RunSecretScope(deps.secrets, deps.publisher, trajectory_id)
        #: the agent's sandbox spec, and the artifacts so far (path -> key): what an
        #: evaluation's checks and retry rounds start from (services/runner/evaluation.py)
        self.spec: SandboxSpec | None = None
        self.outputs: dict[str, str] = {}

    # --- control ------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        """Stop the agent (cancel, budget); the run then ends accordingly."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stopped.set()

    # --- the run ------------------------------------------------------------------

    async def execute(self) -> None:
        try:
            state = await self._claim()
        except _Skip as skip:
            await self._skipped(skip.state)
            return
        if state is None:  # the run's state is gone: nothing to coordinate with
            await self._end_failed(
                _error(500, "server_error", "run_state_missing", "The run's state was lost."),
                AgentOutcome(),
            )
            return
        token = generate_token()
        with tracing.span(
            f"invoke_agent {self.event.agent}",
            parent=tracing.extract({"traceparent": state.traceparent})
            if state.traceparent
            else None,
            gen_ai__operation__name="invoke_agent",
            gen_ai__agent__name=self.event.agent,
            gen_ai__request__model=self.event.model,
            jetty__trajectory_id=self.trajectory_id,
            jetty__collection=self.collection,
        ) as span:
            self._span = span
            if span is not None:
                parent = tracing.traceparent_of(span)
                with contextlib.suppress(Exception):
                    state = await self.deps.runs.update(
                        self.trajectory_id,
                        lambda s: s.model_copy(update={"agent_traceparent": parent}),
                    )
            await self._execute_once(state, token)

    async def _execute_once(self, state: RunState, token: str) -> None:
        try:
            await self._execute(state, token)
        except SandboxError as exc:  # the sandbox broke after it started
            log.warning("run %s: sandbox failed: %s", self.trajectory_id, exc)
            await self._end_failed(
                _error(503, "server_error", "sandbox_failed", f"The sandbox failed: {exc}"),
                AgentOutcome(),
            )
        except Exception as exc:  # our own failure must still end the run
            log.exception("run %s failed in the runner", self.trajectory_id)
            await self._end_failed(
                _error(500, "server_error", "runner_error", f"The runner failed: {exc!r}"),
                AgentOutcome(),
            )
        finally:
            await self.secret_scope.close()
            with contextlib.suppress(Exception):
                await self.deps.tokens.revoke(hash_token(token))
            if self.sandbox is not None:
                with contextlib.suppress(Exception):
                    await self.sandbox.destroy()

    async def _claim(self) -> RunState | None:
        runner = self.deps.runner

        def claim(state: RunState) -> RunState:
            if state.status in TERMINAL_STATUSES:
                raise _Skip(state)
            if state.status == "running":
                # The runner that had it is gone (the queue handed it on).
                raise _Skip(state)
            if state.cancel_requested:
                raise _Skip(state)
            return state.model_copy(update={"status": "running", "runner": runner})

        try:
            return await self.deps.runs.update(self.trajectory_id, claim)
        except RunNotFound:
            return None

    async def _skipped(self, state: RunState) -> None:
        if state.status in TERMINAL_STATUSES:
            log.info("run %s already %s; skipped", self.trajectory_id, state.status)
            return
        if state.status == "running":
            await self._revoke_stale(state)
            await self._end_failed(
                _error(
                    500,
                    "server_error",
                    "runner_lost",
                    "The runner executing this run stopped before it finished; "
                    "runs are not resumed. Start it again.",
                ),
                AgentOutcome(),
            )
            return
        await self._end(RunbookCancelled(task=self.event.task, ended_at=_now()), "cancelled")

    async def _revoke_stale(self, state: RunState) -> None:
        if state.token_hash is not None:
            with contextlib.suppress(Exception):
                await self.deps.tokens.revoke(state.token_hash)

    async def _execute(self, state: RunState, token: str) -> None:
        deps = self.deps
        adapter = deps.adapters.get(self.event.agent)
        if adapter is None:
            await self._end_failed(
                _error(
                    400,
                    "invalid_request_error",
                    "agent_unavailable",
                    f"This runner has no adapter for agent '{self.event.agent}'.",
                ),
                AgentOutcome(),
            )
            return
        await deps.tokens.register_run_token(
            token, self.collection, self.trajectory_id, self.event.key
        )
        await deps.runs.update(
            self.trajectory_id, lambda s: s.model_copy(update={"token_hash": hash_token(token)})
        )
        try:
            await self.secret_scope.load(self.event.secret_names)
        except SecretsUnavailable as exc:
            await self._end_failed(
                _error(503, "server_error", "secrets_unavailable", f"Secrets not available: {exc}"),
                AgentOutcome(),
            )
            return
        layout = deps.backend.layout
        command = adapter.command(
            AgentSpec(
                model=self.event.model,
                runbook=self.event.runbook,
                prompt=self.event.prompt,
                gateway_url=layout.gateway_url,
                token=token,
                workspace=layout.workspace,
                home=layout.home,
                agents_dir=layout.agents_dir,
            )
        )
        command = self.secret_scope.apply(command)
        settings = deps.settings
        spec = SandboxSpec(
            trajectory_id=self.trajectory_id,
            collection=self.collection,
            task=self.event.task,
            command=command,
            inputs=[InputFile(p, f"{self.collection}/{p}") for p in self.event.file_paths]
            + [InputFile(item.path, item.key) for item in self.event.inputs],
            limits=run_limits(settings, self.event.timeout_s, self.event.limits),
            artifact_prefix=f"{self.collection}/{self.event.task}/{self.trajectory_id}/",
            labels={"trajectory-id": self.trajectory_id, "agent": self.event.agent},
        )
        self.spec = spec
        self.limits = spec.limits
        try:
            with metrics.Timer(metrics.SANDBOX_START.labels(deps.backend.name).observe):
                self.sandbox = await deps.backend.start(spec)
        except SandboxError as exc:
            await self._end_failed(
                _error(503, "server_error", "sandbox_failed", f"The sandbox did not start: {exc}"),
                AgentOutcome(),
            )
            return
        self.agent_started_at = _now()
        await deps.publisher.publish(
            self.collection,
            self.trajectory_id,
            RunbookStarted(
                task=self.event.task,
                started_at=self.agent_started_at,
                runner=deps.runner,
                backend=deps.backend.name,
                sandbox_id=self.sandbox.sandbox_id,
            ),
        )
        parser = adapter.parser()
        watcher = asyncio.create_task(self._watch_state(), name=f"watch-{self.trajectory_id}")
        try:
            await self._pump(self.sandbox, parser)
            result = await self.sandbox.wait()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        outcome = bound_outcome(
            parser.outcome(result.exit_code), deps.settings.runner_step_text_limit
        )
        await self._store_artifacts(self.sandbox)
        if self.event.evaluation is not None:
            evaluation = Evaluation(self, self.event.evaluation, token)
            result, outcome = await evaluation.rounds(result, outcome)
        await self._finish(result, outcome)

    async def _pump(self, sandbox: Sandbox, parser: StreamParser) -> None:
        """Agent output → step events, until the agent's stdout closes."""
        async for line in sandbox.lines():
            try:
                steps = parser.feed(line, time.time())
            except Exception:  # a parser bug must not lose the run
                log.exception("run %s: agent output not understood", self.trajectory_id)
                continue
            limit = self.deps.settings.runner_step_text_limit
            for parsed in steps:
                # Every field of the agent's own account is bounded before use.
                step = bound_step(parsed, limit)
                await self._publish_step(step, clip(parser.progress_text(step), limit))

    async def _publish_step(self, step: ParsedStep, progress: str | None) -> None:
        index = await self.deps.runs.allocate_steps(self.trajectory_id)
        if step.kind == "tool_call":
            tracing.record_span(
                f"execute_tool {step.tool_name or ''}".strip(),
                self._span,
                step.started,
                step.ended,
                {
                    "gen_ai.operation.name": "execute_tool",
                    "gen_ai.tool.name": step.tool_name,
                    "gen_ai.tool.call.id": step.tool_call_id,
                    "jetty.step_index": index,
                },
            )
        await self.deps.publisher.publish(
            self.collection,
            self.trajectory_id,
            RunbookStep(
                task=self.event.task,
                step_index=index,
                kind=step.kind,
                started_at=datetime.fromtimestamp(step.started, UTC),
                ended_at=datetime.fromtimestamp(max(step.ended, step.started), UTC),
                text=step.text,
                tool_name=step.tool_name,
                tool_call_id=step.tool_call_id,
                tool_input=step.tool_input,
                is_error=step.is_error,
                progress=progress,
            ),
        )

    async def _watch_state(self) -> None:
        """Kill the sandbox when a cancel is asked for or the gateway refused a call
        for the budget (the agent may otherwise retry for a long time)."""
        poll = self.deps.settings.runner_state_poll
        while True:
            try:
                state = await self.deps.runs.get(self.trajectory_id)
            except (NatsError, TimeoutError):
                state = None
            if state is not None and state.status in TERMINAL_STATUSES:
                # Ended elsewhere: another runner took this run for lost (this one
                # missed its heartbeats). Its end stands; stop the agent.
                self.request_stop("superseded")
            elif state is not None and (
                state.cancel_requested or state.budget_exceeded or state.refused_call
            ):
                self.request_stop("cancel" if state.cancel_requested else "budget")
            if self.stop_reason is not None and self.sandbox is not None:
                await self.sandbox.kill()
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), poll)

    async def _store_artifacts(self, sandbox: Sandbox) -> None:
        """Publish each stored file; keep the files that were not stored (those of
        the last round count) for the run's end."""
        try:
            outputs = await sandbox.collect_outputs()
        except Exception as exc:
            log.warning("run %s: outputs not collected: %r", self.trajectory_id, exc)
            self.lost_artifacts = [ArtifactError("*", f"the outputs were not collected: {exc}")]
            return
        for out in outputs:
            self.outputs[out.path] = out.key
            await self.deps.publisher.publish(
                self.collection,
                self.trajectory_id,
                ArtifactStored(
                    task=self.event.task,
                    path=out.path,
                    key=out.key,
                    size=out.size,
                    sha256=out.sha256,
                    content_type=out.content_type,
                    stored_at=_now(),
                ),
            )
        self.lost_artifacts = list(sandbox.artifact_errors)

    # What an evaluation's retry rounds reuse (services/runner/evaluation.py).
    pump = _pump
    watch_state = _watch_state
    store_artifacts = _store_artifacts

    async def _finish(self, result: SandboxExit, outcome: AgentOutcome) -> None:
        agent = self.event.agent
        if self.stop_reason is None:
            # The agent may have given up on its own right after a refused call,
            # before the state watch saw the refusal: the refusal is the cause.
            with contextlib.suppress(NatsError, TimeoutError):
                state = await self.deps.runs.get(self.trajectory_id)
                if state is not None and (state.budget_exceeded or state.refused_call):
                    self.stop_reason = "budget"
        if self.stop_reason == "cancel":
            await self._end(
                RunbookCancelled(
                    task=self.event.task,
                    ended_at=_now(),
                    agent_started_at=self.agent_started_at,
                    outcome=outcome,
                ),
                "cancelled",
            )
            return
        state = None
        if self.stop_reason == "budget":
            state = await self.deps.runs.get(self.trajectory_id)
        if state is not None and state.refused_call:
            error = _error(402, "budget_exceeded", "model_price_unknown", state.refused_call)
        elif self.stop_reason == "budget":
            spent = f" (spent {state.spent_tokens} tokens, ${state.spent_usd})" if state else ""
            error = _error(
                402,
                "budget_exceeded",
                "budget_exceeded",
                f"The run's budget was exhausted{spent}; the agent's next model call was refused.",
            )
        elif result.exhausted:
            error = resource_exhausted(result.exhausted, self.limits)
        elif result.timed_out:
            error = _error(
                504,
                "timeout",
                "timeout",
                f"The agent did not finish within {self.event.timeout_s:g} seconds.",
            )
        elif result.exit_code != 0:
            detail = (outcome.result or result.stderr_tail or "").strip()[-1000:]
            error = _error(
                500,
                "agent_error",
                "agent_failed",
                f"{agent} exited with code {result.exit_code}" + (f": {detail}" if detail else "."),
            )
        elif self.lost_artifacts:
            error = artifacts_incomplete(self.lost_artifacts)
        else:
            await self._end(
                RunbookCompleted(
                    task=self.event.task,
                    ended_at=_now(),
                    agent_started_at=self.agent_started_at,
                    outcome=outcome,
                ),
                "completed",
            )
            return
        await self._end_failed(error, outcome)

    async def _end_failed(self, error: ErrorRecord, outcome: AgentOutcome) -> None:
        await self._end(
            RunbookFailed(
                task=self.event.task,
                ended_at=_now(),
                agent_started_at=self.agent_started_at,
                outcome=outcome,
                error=error,
            ),
            "failed",
        )

    async def _end(
        self, data: RunbookCompleted | RunbookFailed | RunbookCancelled, status: Any
    ) -> None:
        """The one end event. The live state decides first, by compare-and-set, who
        ends the run: if it had already ended (the gateway cancelled it while queued,
        or another runner failed it as lost), that end stands and nothing more is
        published."""

        def end(state: RunState) -> RunState:
            if state.status in TERMINAL_STATUSES:
                raise _Skip(state)
            return state.model_copy(update={"status": status})

        try:
            await self.deps.runs.update(self.trajectory_id, end)
        except _Skip as skip:
            log.warning(
                "run %s already ended (%s) elsewhere; not ending it again",
                self.trajectory_id,
                skip.state.status,
            )
            return
        except Exception as exc:  # the event below is the record either way
            log.warning("run %s: final state not stored: %r", self.trajectory_id, exc)
        await self.deps.publisher.publish(self.collection, self.trajectory_id, data)
        tracing.set_attributes(self._span, {"jetty.status": str(status)})
        if isinstance(data, RunbookFailed):
            tracing.set_error(self._span, data.error.code or data.error.type, data.error.message)
        metrics.RUNBOOK_OUTCOMES.labels(self.event.agent, str(status)).inc()
