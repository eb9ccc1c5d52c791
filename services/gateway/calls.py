"""What every ingress format shares: reading the body, opening a call to the
proxies, and cancelling it when the client goes away.

An ingress handler (OpenAI chat here in ``chat.py``; the Anthropic, Responses
and Gemini formats in ``ingress/``) turns its request into the OpenAI chat
shape, opens a call with :func:`open_call`, and translates the proxy's OpenAI
frames back into its own format. Recording, routing and cancellation are the
same for all of them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from aiohttp import web
from nats.errors import Error as NatsError

from services.gateway.policy import check_model
from services.gateway.state import Gateway
from shared.chatwire import ChatCall, Frame
from shared.errors import ApiError, PayloadTooLarge, Unavailable
from shared.events.completion import Mode
from shared.events.runbook import TERMINAL_STATUSES
from shared.ids import new_trajectory_id
from shared.openai_chat import ChatCompletionRequest, ChatHead
from shared.runs import RunNotFound, RunState, RunStateError
from shared.tokens import TokenRecord

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


async def read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(
            f"Request body of {request.content_length} bytes exceeds the limit of {limit} bytes.",
            code="request_too_large",
        )
    if request.content_length is not None and "Content-Encoding" not in request.headers:
        # The common case: a declared length within the limit and nothing to
        # decompress, read in one go (no async iterator per request).
        return await request.read()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(256 * 1024):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(
                f"Request body exceeds the limit of {limit} bytes.", code="request_too_large"
            )
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class OpenCall:
    """A call handed to the proxies; iterate :meth:`frames` once."""

    gw: Gateway
    call: ChatCall
    body: bytes
    #: trace headers for the proxy instead of the current span's (runbook calls)
    trace: dict[str, str] | None = None

    @property
    def trajectory_id(self) -> str:
        return self.call.trajectory_id

    async def frames(self) -> AsyncIterator[tuple[Frame, bytes]]:
        """The proxy's frames; tags errors with the trajectory id and cancels the
        upstream call if the client disconnects (the handler is cancelled) or a
        write finds it gone."""
        try:
            async for item in self.gw.relay.call(self.call, self.body, self.trace):
                yield item
        except ApiError as exc:
            exc.trajectory_id = self.trajectory_id
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            self.cancel()
            raise

    def cancel(self) -> None:
        """Stop the upstream call (in the background; the proxy running it stops)."""
        task = asyncio.ensure_future(self.gw.relay.cancel(self.trajectory_id))
        self.gw.background.add(task)
        task.add_done_callback(self.gw.background.discard)

    async def response_json(self) -> bytes:
        """The whole ``chat.completion`` JSON of a non-streaming call."""
        async for kind, payload in self.frames():
            if kind is Frame.RESPONSE:
                return payload
        raise ApiError("The proxy ended the call without a response.", status=502)


async def open_call(
    gw: Gateway,
    auth: TokenRecord,
    req: ChatHead | ChatCompletionRequest,
    body: bytes,
    *,
    received_at: float | None = None,
    ingress: str = "chat.completions",
) -> OpenCall:
    """Assign a trajectory id and prepare the call (large bodies by claim check).

    ``body`` is the OpenAI chat request JSON the proxy will read; ``req`` its
    validated form (its head will do)."""
    return await open_model_call(
        gw,
        auth,
        req.model,
        req.task,
        body,
        received_at=received_at,
        ingress=ingress,
        stream=bool(req.stream),
        include_usage=req.include_usage,
        keep=not (req.jetty is not None and req.jetty.store is False),
    )


async def open_model_call(
    gw: Gateway,
    auth: TokenRecord,
    model: str,
    task: str,
    body: bytes,
    *,
    received_at: float | None,
    ingress: str,
    stream: bool = False,
    include_usage: bool = False,
    keep: bool = True,
    kind: Literal["chat", "embedding"] = "chat",
) -> OpenCall:
    """:func:`open_call` for any call kind: ``keep`` False records no bodies."""
    trace: dict[str, str] | None = None
    if auth.trajectory_id is not None:
        state = await _run_step(gw, auth.trajectory_id)
        trajectory_id, collection, task = state.trajectory_id, state.collection, state.task
        step_index = state.next_step - 1
        if state.agent_traceparent is not None:
            # The agent's calls are children of the runner's invoke_agent span.
            trace = {"traceparent": state.agent_traceparent}
        mode: Mode = "runbook"
    else:
        check_model(auth, model)
        trajectory_id, collection, step_index = new_trajectory_id(), auth.collection, 0
        mode = "passthrough"
    body_ref = None
    if len(body) > gw.settings.claim_threshold_bytes:
        body_ref = await gw.claims.put(f"call/{trajectory_id}", body)
        body = b""
    call = ChatCall(
        trajectory_id=trajectory_id,
        collection=collection,
        task=task,
        mode=mode,
        step_index=step_index,
        received_at=received_at if received_at is not None else time.time(),
        stream=stream,
        include_usage=include_usage,
        ingress=ingress,
        body_ref=body_ref,
        key_id=auth.meter_id or None,
        key_metered=auth.budget is not None or auth.limits.tokens_per_minute is not None,
        store=gw.settings.store_bodies if keep else "none",
        kind=kind,
    )
    return OpenCall(gw, call, body, trace)


async def _run_step(gw: Gateway, trajectory_id: str) -> RunState:
    """A runbook agent's call: check that its run is live and within budget, and
    draw the step index the call is recorded under (one compare-and-set)."""

    def claim(state: RunState) -> RunState:
        if state.status in TERMINAL_STATUSES or state.cancel_requested:
            raise _RunClosed(state.status)
        if state.over_budget():
            return state.model_copy(update={"budget_exceeded": True})
        return state.model_copy(update={"next_step": state.next_step + 1})

    try:
        state = await gw.runs.update(trajectory_id, claim)
    except (_RunClosed, RunNotFound):
        raise ApiError(
            "This runbook run has ended; its token no longer reaches the models.",
            status=403,
            error_type="permission_error",
            code="run_not_active",
        ) from None
    except (RunStateError, NatsError, TimeoutError) as exc:
        raise Unavailable(
            f"The run's state could not be read ({exc.__class__.__name__}); retry.",
            code="run_state_unavailable",
            retry_after=1,
        ) from None
    if state.over_budget():
        budget = state.budget
        raise ApiError(
            "This run's budget is spent "
            f"({state.spent_tokens} tokens, ${state.spent_usd}; limits: "
            f"{budget.max_tokens or 'none'} tokens, ${budget.max_cost_usd or 'none'}).",
            status=403,
            error_type="permission_error",
            code="budget_exceeded",
        )
    return state


class _RunClosed(Exception):
    pass
