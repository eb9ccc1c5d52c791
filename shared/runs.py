"""The live state of each runbook run, shared by gateway, proxy and runner.

One JetStream key-value entry per run (bucket ``jetty_runs``, key = trajectory id).
It is *coordination* state, not the record (events are): the step counter that
gateway and runner draw indexes from, the run's budget and what its model calls
have spent so far, whether a cancel was asked for, and the status as the runner
last set it. Every change is a compare-and-set on the entry's revision, retried
on conflict, so concurrent writers (a gateway allocating a step, a proxy adding
spend, the runner changing status) never lose each other's updates.

Exception tree::

    RunStateError
     └── RunNotFound     no entry for that trajectory id (unknown or expired)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.errors import NotFoundError as JsNotFoundError
from pydantic import BaseModel, ConfigDict

from shared import subjects
from shared.events.runbook import Budget, RunStatus

log = logging.getLogger(__name__)

# Entries outlive any run by far; they only serve live coordination.
RUN_STATE_TTL = 7 * 24 * 3600.0
_MAX_CAS_RETRIES = 100


class RunStateError(Exception):
    pass


class RunNotFound(RunStateError):
    pass


class RunState(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    trajectory_id: str
    collection: str
    task: str
    agent: str
    model: str
    status: RunStatus = "pending"
    budget: Budget = Budget()
    #: what the run's model calls have used so far (added by the proxy as each ends)
    spent_prompt_tokens: int = 0
    spent_completion_tokens: int = 0
    spent_tokens: int = 0
    #: exact decimal string; calls with unknown price add nothing and are counted
    spent_usd: str = "0"
    unpriced_calls: int = 0
    model_calls: int = 0
    #: the next free step index (0 is never used: indexes start at 1)
    next_step: int = 1
    cancel_requested: bool = False
    #: set by the gateway when it refused a call for the budget
    budget_exceeded: bool = False
    #: set by the proxy when it refused a call in a way that ends the run (the
    #: model has no price and the run a dollar budget): the run's error message
    refused_call: str | None = None
    runner: str | None = None
    #: SHA-256 of the run-scoped token the agent holds (revoked when the run ends)
    token_hash: str | None = None
    updated_at: datetime
    #: W3C trace context of the request that started the run, and of the runner's
    #: ``invoke_agent`` span (the parent of the agent's model calls); tracing only
    traceparent: str | None = None
    agent_traceparent: str | None = None

    def over_budget(self) -> bool:
        """True once the recorded spend reached a limit: the next call is refused."""
        limit_tokens = self.budget.max_tokens
        if limit_tokens is not None and self.spent_tokens >= limit_tokens:
            return True
        limit_usd = self.budget.max_cost_usd
        return limit_usd is not None and Decimal(self.spent_usd) >= Decimal(limit_usd)


async def ensure_runs_bucket(js: JetStreamContext, replicas: int = 1) -> Any:
    try:
        return await js.key_value(subjects.RUNS_BUCKET)
    except (BucketNotFoundError, JsNotFoundError):
        return await js.create_key_value(
            config=KeyValueConfig(
                bucket=subjects.RUNS_BUCKET,
                history=1,
                ttl=RUN_STATE_TTL,
                storage=StorageType.FILE,
                replicas=replicas,
                description="live state of runbook runs (step counter, spend, cancel)",
            )
        )


class RunStates:
    """Reads and compare-and-set updates of run state entries."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._kv: Any = None

    async def bucket(self) -> Any:
        if self._kv is None:
            self._kv = await ensure_runs_bucket(self._js)
        return self._kv

    async def create(self, state: RunState) -> None:
        kv = await self.bucket()
        await kv.create(state.trajectory_id, state.model_dump_json().encode())

    async def get(self, trajectory_id: str) -> RunState | None:
        kv = await self.bucket()
        try:
            entry = await kv.get(trajectory_id)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return RunState.model_validate_json(entry.value)

    async def update(self, trajectory_id: str, change: Callable[[RunState], RunState]) -> RunState:
        """Apply ``change`` atomically (compare-and-set, retried on conflict); the
        new state. ``change`` must be a pure function of the state it is given."""
        kv = await self.bucket()
        for _ in range(_MAX_CAS_RETRIES):
            try:
                entry = await kv.get(trajectory_id)
            except KeyNotFoundError:
                raise RunNotFound(trajectory_id) from None
            if not entry.value:
                raise RunNotFound(trajectory_id)
            current = RunState.model_validate_json(entry.value)
            new = change(current).model_copy(update={"updated_at": datetime.now(UTC)})
            try:
                await kv.update(trajectory_id, new.model_dump_json().encode(), last=entry.revision)
            except KeyWrongLastSequenceError:
                continue
            return new
        raise RunStateError(f"run state {trajectory_id} kept changing under us")

    async def allocate_steps(self, trajectory_id: str, count: int = 1) -> int:
        """Reserve ``count`` consecutive step indexes; the first of them."""
        state = await self.update(
            trajectory_id, lambda s: s.model_copy(update={"next_step": s.next_step + count})
        )
        return state.next_step - count

    async def add_spend(
        self,
        trajectory_id: str,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        total_tokens: int,
        cost_usd: str | None,
    ) -> RunState:
        def add(s: RunState) -> RunState:
            spent = Decimal(s.spent_usd) + (Decimal(cost_usd) if cost_usd is not None else 0)
            return s.model_copy(
                update={
                    "spent_prompt_tokens": s.spent_prompt_tokens + prompt_tokens,
                    "spent_completion_tokens": s.spent_completion_tokens + completion_tokens,
                    "spent_tokens": s.spent_tokens + total_tokens,
                    "spent_usd": format(spent, "f"),
                    "unpriced_calls": s.unpriced_calls + (1 if cost_usd is None else 0),
                    "model_calls": s.model_calls + 1,
                }
            )

        return await self.update(trajectory_id, add)
