"""Events of a runbook trajectory: its status changes, the agent's own steps and
the artifacts it left.

A runbook's status moves ``pending`` (``runbook.requested``) → ``running``
(``runbook.started``) → one of ``runbook.completed`` / ``runbook.failed`` /
``runbook.cancelled``. A run may also end straight from ``pending`` (cancelled
while queued, or failed before its sandbox started). The model calls the agent
makes through the gateway are ordinary completion events with ``mode: runbook``
and the run's trajectory id; the agent's messages, tool calls and tool results
are ``runbook.step`` events; every file the agent created or changed is an
``artifact.stored`` event. Steps of both kinds share one index space per run
(allocated in the run's state record, :mod:`shared.runs`), so they sort in the
order they happened.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.events.completion import COST_PATTERN, ErrorRecord
from shared.keys import RunKey
from shared.limits import RunLimits

AgentName = Literal["claude-code", "codex", "gemini-cli", "opencode"]
AGENTS: tuple[str, ...] = ("claude-code", "codex", "gemini-cli", "opencode")

RunStatus = Literal["pending", "running", "completed", "failed", "cancelled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})

AgentStepKind = Literal["message", "tool_call", "tool_result"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Budget(_Frozen):
    """Limits on the model calls of one run, enforced by the gateway. ``None``: no
    limit of that kind."""

    max_tokens: int | None = Field(default=None, ge=1)
    max_cost_usd: str | None = Field(default=None, pattern=COST_PATTERN)


class InputObject(_Frozen):
    """A workspace input that is not at its own path in the collection: a file of
    the files API (``jetty.files``) or an entry of an unpacked zip."""

    #: where it goes, relative to the workspace (``uploads/data.csv``)
    path: str
    #: its object key in the bucket
    key: str
    #: the ``file-…`` id it came from
    file_id: str | None = None


class RoutineLink(_Frozen):
    """The routine whose firing started a run."""

    routine_id: str
    #: the scheduled time this run fills (epoch seconds); None: run now, by hand
    slot: float | None = None


class EvaluationCheck(_Frozen):
    """One check run after the agent: a ``command`` (passes on exit code 0) or a
    ``rubric`` scored by a judge model (passes at ``threshold`` or above)."""

    name: str = Field(min_length=1, max_length=100)
    command: str | None = Field(default=None, min_length=1, max_length=8192)
    rubric: str | None = Field(default=None, min_length=1, max_length=16384)
    #: the judge model (default: the run's model)
    model: str | None = Field(default=None, min_length=1, max_length=256)
    threshold: float = Field(default=0.7, ge=0, le=1)
    timeout_s: float = Field(default=120.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _one_kind(self) -> EvaluationCheck:
        if (self.command is None) == (self.rubric is None):
            raise ValueError("a check has either 'command' or 'rubric'")
        return self


class EvaluationSpec(_Frozen):
    checks: list[EvaluationCheck] = Field(min_length=1, max_length=20)
    #: agent rounds in all, the first included: a failed evaluation retries the
    #: agent with the feedback while rounds are left
    max_rounds: int = Field(default=3, ge=1, le=10)


class RunbookRequested(_Frozen):
    """The gateway accepted a runbook; the runner's work queue holds it (pending)."""

    task: str
    agent: AgentName
    model: str
    #: the system message(s): the runbook the agent follows
    runbook: str
    #: the user message(s): what to do now
    prompt: str
    #: object paths inside the collection (``uploads/data.csv``), each checked to
    #: exist before this event was published; placed in the workspace at that path
    file_paths: list[str] = Field(default_factory=list)
    #: inputs from the files API (``jetty.files``, unpacked with ``jetty.unzip``)
    inputs: list[InputObject] = Field(default_factory=list)
    #: workspace paths the result shows first (front matter or ``jetty.primary_outputs``)
    primary_outputs: list[str] = Field(default_factory=list)
    #: where the agent came from: the request, the runbook's front matter, or the model
    agent_source: Literal["request", "front_matter", "model"] = "request"
    #: the stored Markdown file the runbook was read from (``jetty.runbook_path``)
    runbook_path: str | None = None
    #: names of the secrets the sandbox gets as environment variables (values are
    #: sealed in the run's secrets entry, never in an event)
    secret_names: list[str] = Field(default_factory=list)
    #: set when a routine started the run
    routine: RoutineLink | None = None
    #: checks after the agent, and its retry rounds (front matter or jetty.evaluation)
    evaluation: EvaluationSpec | None = None
    budget: Budget = Budget()
    #: the key that started the run: the agent's calls count toward its spend,
    #: budget and tokens per minute too (unset: a routine, or an older event)
    key: RunKey | None = None
    #: wall-clock limit of the agent's run, seconds
    timeout_s: float = Field(gt=0)
    #: the sandbox's limits the request asked for (``jetty.limits``; unset: the
    #: runner's defaults), already checked against the operator's maxima
    limits: RunLimits = RunLimits()
    requested_at: datetime
    #: the original request, recorded as sent (minus the jetty block's secrets: none)
    request: dict[str, Any] = Field(default_factory=dict)


class RunbookStarted(_Frozen):
    """A runner took the run and its sandbox is starting (running)."""

    task: str
    started_at: datetime
    runner: str
    backend: str
    sandbox_id: str


class AgentOutcome(_Frozen):
    """What the agent itself reported at its end (its final JSON event)."""

    result: str | None = None
    exit_code: int | None = None
    num_turns: int | None = None
    #: the agent's own usage figures, as it printed them (informational: the
    #: trajectory's usage is the sum of the recorded model calls)
    reported_usage: dict[str, int] = Field(default_factory=dict)


class _RunbookEnded(_Frozen):
    task: str
    ended_at: datetime
    #: when the agent process started (None if it never did)
    agent_started_at: datetime | None = None
    outcome: AgentOutcome = AgentOutcome()


class RunbookCompleted(_RunbookEnded):
    pass


class RunbookFailed(_RunbookEnded):
    error: ErrorRecord


class RunbookCancelled(_RunbookEnded):
    reason: str = "cancel_requested"


class RunbookStep(_Frozen):
    """One step of the agent's own stream, in the same shape for every agent."""

    task: str
    step_index: int = Field(ge=0)
    kind: AgentStepKind
    started_at: datetime
    ended_at: datetime
    #: assistant text (message) or the tool's output (tool_result)
    text: str | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None
    tool_input: dict[str, Any] | None = None
    is_error: bool = False
    #: the step as one line of human-readable progress, in the agent's own terms
    #: (what a runbook's stream shows as content); None: nothing to show
    progress: str | None = None


class ArtifactStored(_Frozen):
    """A file the agent created or changed, now in the object store."""

    task: str
    #: relative to the workspace: ``results/summary.md``
    path: str
    #: the object's key in the bucket: ``<collection>/<task>/<trajectory>/<path>``
    key: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    content_type: str
    stored_at: datetime


class CheckResult(_Frozen):
    name: str
    kind: Literal["command", "rubric"]
    passed: bool
    #: the judge's score (rubric), 0 to 1
    score: float | None = None
    #: the command's exit code (command); None when it was killed
    exit_code: int | None = None
    #: the command's output, or the judge's answer (clipped)
    output: str | None = None
    #: what the agent is told when it retries
    feedback: str | None = None
    duration_ms: float = Field(ge=0)


class RunbookEvaluated(_Frozen):
    """One round of a run's evaluation, after the agent of that round ended."""

    task: str
    #: 1 for the agent's first attempt
    round: int = Field(ge=1)
    passed: bool
    checks: list[CheckResult]
    #: whether the agent runs again with the feedback
    will_retry: bool
    evaluated_at: datetime
