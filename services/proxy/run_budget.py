"""A runbook call against its run's dollar budget, before it goes upstream.

A call whose price is unknown would cost the run's budget nothing (its
``cost_usd`` is null), so a run with ``max_cost_usd`` could spend without bound
on an unpriced model. When the run has a dollar budget, the targets of the
call's plan whose price the table does not know are left out; if none is left,
the call is refused up front with ``model_price_unknown`` naming the model, and
the refusal is written into the run's state, so the runner ends the run with
that error rather than the agent's own reaction to it.
"""

from __future__ import annotations

import logging

from nats.errors import Error as NatsError

from services.proxy import pricing
from services.proxy.router import Route
from shared.errors import ApiError, Unavailable
from shared.runs import RunNotFound, RunState, RunStateError, RunStates

log = logging.getLogger(__name__)


#: providers that bill nothing (the built-in mock answers locally)
FREE_PROVIDERS = frozenset({"mock"})


def priced(plan: tuple[Route, ...]) -> tuple[Route, ...]:
    return tuple(
        r
        for r in plan
        if r.provider.name in FREE_PROVIDERS
        or pricing.price_for(r.provider.name, r.upstream_model) is not None
    )


async def priced_plan(
    runs: RunStates | None, trajectory_id: str, model: str, plan: tuple[Route, ...]
) -> tuple[Route, ...]:
    """``plan`` with its unpriced targets left out when the run has a dollar budget;
    raises :class:`ApiError` (403, ``model_price_unknown``) when none is priced."""
    if runs is None:
        return plan
    kept = priced(plan)
    if len(kept) == len(plan):
        return plan
    try:
        state = await runs.get(trajectory_id)
    except (RunStateError, NatsError, TimeoutError) as exc:
        raise Unavailable(
            f"The run's state could not be read ({exc.__class__.__name__}); retry.",
            code="run_state_unavailable",
            retry_after=1,
        ) from None
    if state is None or state.budget.max_cost_usd is None:
        return plan
    if kept:
        return kept
    message = (
        f"The model '{model}' has no known price, and this run has a dollar budget "
        f"(${state.budget.max_cost_usd}): its calls cannot be counted against it, so "
        "they are refused. Use a priced model, or add its price to the pricing table."
    )

    def refuse(s: RunState) -> RunState:
        return s.model_copy(update={"refused_call": s.refused_call or message})

    try:
        await runs.update(trajectory_id, refuse)
    except (RunNotFound, RunStateError, NatsError, TimeoutError) as exc:
        log.warning("refusal not written to run %s: %r", trajectory_id, exc)
    raise ApiError(message, status=403, error_type="permission_error", code="model_price_unknown")
