"""The step spine: a trajectory's steps as a person reads them.

A runbook's steps share one counter (docs/runbooks.md), so the gateway's model
calls (kind ``completion``) and the agent's own steps (``message``, ``tool_call``,
``tool_result``) sort in the order they happened. A model call is made *before*
the agent reports what the answer made it do, so each run of model calls belongs
to the agent step that follows it: that is the turn they served, and the spine
nests them there. Model calls after the last agent step (the agent is still
thinking, or the run ended mid-call) are the *pending* row.

A passthrough trajectory's spine is its one completion step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from shared.db.trajectories import StepView, TrajectoryView

AGENT_KINDS = frozenset({"message", "tool_call", "tool_result"})
LABELS = {
    "message": "assistant",
    "tool_call": "tool call",
    "tool_result": "tool result",
    "completion": "model call",
    "embedding": "embeddings call",
}


@dataclass
class Row:
    #: the agent step (or, for passthrough, the completion); None for the pending row
    head: StepView | None
    calls: list[StepView] = field(default_factory=list)

    @property
    def dom_id(self) -> str:
        return "row-pending" if self.head is None else f"row-{self.head.index}"

    @property
    def steps(self) -> list[StepView]:
        return [*self.calls, *([self.head] if self.head else [])]

    @property
    def last_index(self) -> int:
        return max(s.index for s in self.steps)

    @property
    def cost_usd(self) -> float | None:
        costs = [s.cost_usd for s in self.steps if s.cost_usd is not None]
        return sum(costs) if costs else None

    @property
    def tokens(self) -> int | None:
        used = [s.usage.total_tokens for s in self.steps if s.usage is not None]
        return sum(used) if used else None

    @property
    def failed(self) -> bool:
        return any(s.error is not None or s.is_error or s.status == "failed" for s in self.steps)

    @property
    def label(self) -> str:
        return "model call" if self.head is None else LABELS.get(self.head.kind, self.head.kind)


def rows(view: TrajectoryView) -> tuple[list[Row], Row | None]:
    """The spine's rows in order, and the pending row (or None)."""
    if view.mode != "runbook":
        return [Row(head=s) for s in view.steps], None
    out: list[Row] = []
    pending: list[StepView] = []
    for step in view.steps:
        if step.kind in AGENT_KINDS:
            out.append(Row(head=step, calls=pending))
            pending = []
        else:
            pending.append(step)
    return out, (Row(head=None, calls=pending) if pending else None)


def most_expensive(all_rows: list[Row]) -> Row | None:
    priced = [r for r in all_rows if r.cost_usd is not None]
    return max(priced, key=lambda r: r.cost_usd or 0.0) if priced else None


@dataclass(frozen=True)
class Bar:
    index: int
    kind: str
    lane: str  # "agent" or "model"
    label: str
    left_pct: float
    width_pct: float
    failed: bool


def timeline(view: TrajectoryView) -> tuple[list[Bar], float]:
    """Each timed step as a bar on the run's time axis (percent of its span), and
    the span in milliseconds. Agent steps and model calls get their own lanes."""
    timed = [s for s in view.steps if s.started_at is not None]
    if not timed:
        return [], 0.0
    starts = [s.started_at for s in timed if s.started_at is not None]
    ends = [s.ended_at for s in timed if s.ended_at is not None]
    start = min(starts)
    end = max([*starts, *ends, *([view.completed_at] if view.completed_at else [])])
    span = max((end - start).total_seconds() * 1000, 1.0)

    def pct(moment: datetime) -> float:
        return (moment - start).total_seconds() * 1000 / span * 100

    bars = []
    for s in timed:
        assert s.started_at is not None
        left = pct(s.started_at)
        width = max(pct(s.ended_at) - left, 0.4) if s.ended_at else 0.4
        bars.append(
            Bar(
                index=s.index,
                kind=s.kind,
                lane="model" if s.kind == "completion" else "agent",
                label=s.tool_name or LABELS.get(s.kind, s.kind),
                left_pct=round(left, 3),
                width_pct=round(min(width, 100 - left), 3),
                failed=s.error is not None or bool(s.is_error),
            )
        )
    return bars, span
