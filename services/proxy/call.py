"""One call's lifecycle: body → route → provider → reply frames → exactly one
terminal event → last frame, with ``completion.requested`` only for a call still
running after ``requested_delay``.

Invariants that must stay true:

* exactly one of ``completion.finished|failed|cancelled`` per call, published
  (and acknowledged by JetStream, bounded) *before* the last frame, so a client
  that fetches its trajectory right after the response finds it;
* the request side is recorded exactly once: by ``completion.requested`` if it
  went out (a call that outlasts the delay, so a reader sees it running), else by
  the end event itself. Every extra event is a socket send for the proxy, NATS
  and the recorder, so a quick call costs one event, not two;
* nothing is sent after the last frame (keep-alives stop first);
* a cancelled call closes its upstream request (the provider's stream is closed
  by ``aclosing``) and records what had been produced.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Final

import orjson
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.errors import MaxPayloadError

from services.proxy import pricing, run_budget
from services.proxy.accumulate import Accumulator, usage_record
from services.proxy.metrics import observe_end, trace_end
from services.proxy.providers.base import (
    ChatChunk,
    CompletionUsage,
    Provider,
    UpstreamCall,
    to_json,
)
from services.proxy.retry import RetryPolicy
from services.proxy.router import Route, Router
from services.proxy.run_masks import RunMasks
from shared import storage_policy, tracing
from shared.bus import ClaimStore, EventPublisher
from shared.chatwire import ChatCall, Frame
from shared.errors import ApiError, NotFound, Unavailable, UpstreamError, UpstreamTimeout
from shared.events.completion import (
    AttemptRecord,
    CompletionCancelled,
    CompletionFailed,
    CompletionFinished,
    CompletionRequested,
    ErrorRecord,
    Usage,
)
from shared.key_usage import KeyUsageStore
from shared.openai_chat import ChatCompletionRequest, parse_chat_request
from shared.redact import recorded_request
from shared.runs import RunStateError, RunStates

log = logging.getLogger(__name__)

CLIENT_DISCONNECTED: Final = "client_disconnected"
PROXY_SHUTDOWN: Final = "proxy_shutdown"
# The client gets usage once, in the final usage-only chunk, and only if it asked.
_WITHOUT_USAGE: Final = {"usage"}
_METADATA_KEY: Final = b',"jetty_metadata":'


@dataclass(frozen=True, slots=True)
class CallDeps:
    """What every call shares: the bus, the router and the limits."""

    nc: NATS
    publisher: EventPublisher
    claims: ClaimStore
    router: Router
    total_timeout: float
    # Seconds a call runs before ``completion.requested`` is published; 0: at once.
    requested_delay: float = 0.25
    # Retries of one target; fallback targets (aliases) are tried whatever it says.
    retry: RetryPolicy = field(default_factory=RetryPolicy.none)
    # Live state of runbook runs: a runbook agent's call adds its spend there before
    # its last frame, so the gateway sees it when it checks the next call's budget.
    runs: RunStates | None = None
    # What each API key has used: every call adds its cost and tokens to its key's
    # entry (before the last frame when the key has a budget or token limit, so
    # the gateway's next check sees it; gathered and added once a second otherwise).
    key_usage: KeyUsageStore | None = None
    # Secret masks of runbook runs (None: secrets are not configured).
    run_masks: RunMasks | None = None


class Phase(Enum):
    """Where a call is in its lifecycle; it only moves forward."""

    #: working on the answer: a cancel is still taken
    RUNNING = "running"
    #: the terminal event is decided (and being published): cancels are ignored,
    #: keep-alives still go out while the acknowledgement is awaited
    ENDED = "ended"
    #: the last frame is out, or none will be: nothing more is sent
    CLOSED = "closed"


def with_metadata(document: bytes, metadata: bytes) -> bytes:
    """Append ``"jetty_metadata": …`` to a serialised JSON object without re-parsing it."""
    return document[:-1] + _METADATA_KEY + metadata + b"}"


class CallRun:
    def __init__(self, deps: CallDeps, call: ChatCall, body: bytes, reply: str) -> None:
        self.deps = deps
        self.call = call
        self.reply = reply
        self._body = body
        self.last_sent = time.monotonic()
        self.phase = Phase.RUNNING
        self.cancel_reason: str | None = None
        self.task: asyncio.Task[None] | None = None
        # The gateway's trace context (from the call's NATS headers), when tracing.
        self.trace_parent: Any = None
        self._span: Any = None
        self._acc = Accumulator()
        self._request: ChatCompletionRequest | None = None
        self._model = "unknown"
        self._provider = "none"
        # The model name the provider was asked for: what the call is priced as.
        self._upstream_model: str | None = None
        self._reached_upstream = False
        # Every upstream try (retries, fallbacks), for the end event.
        self._attempts: list[AttemptRecord] = []
        # Once a chunk has gone to the client the call is committed to its target.
        self._chunk_sent = False
        # The request side: recorded by completion.requested (set once that is under
        # way, never unset unless it could not be built) or else by the end event.
        self._recorded: dict[str, Any] | None = None
        self._requested_out = False
        self._requested_timer: asyncio.TimerHandle | None = None
        self._requested_task: asyncio.Task[bool] | None = None
        self._metadata = orjson.dumps(
            {
                "trajectory_id": call.trajectory_id,
                "collection": call.collection,
                "mode": call.mode,
                "task": call.task,
            }
        )

    # --- control from the worker ------------------------------------------------------

    @property
    def closed(self) -> bool:
        """The last frame is out (or none will be): keep-alives stop."""
        return self.phase is Phase.CLOSED

    def _end(self) -> None:
        self.phase = Phase.ENDED

    def _close(self) -> None:
        self.phase = Phase.CLOSED

    def cancel(self, reason: str) -> bool:
        if self.phase is not Phase.RUNNING or self.task is None or self.task.done():
            return False
        self.cancel_reason = reason
        self.task.cancel()
        return True

    async def keepalive(self) -> None:
        if not self.closed:
            await self._send(Frame.KEEPALIVE)

    # --- the lifecycle ------------------------------------------------------------------

    async def run(self) -> None:
        if not tracing.enabled():  # no span, and no context manager to enter for none
            await self._run_masked()
            return
        with tracing.span("chat", kind="CLIENT", parent=self.trace_parent) as current:
            self._span = current
            await self._run_masked()

    async def _run_masked(self) -> None:
        masks = self.deps.run_masks if self.call.mode == "runbook" else None
        if masks is not None and await masks.acquire(self.call.trajectory_id):
            try:
                await self._run_recorded()
            finally:
                masks.release(self.call.trajectory_id)
            return
        await self._run_recorded()

    async def _run_recorded(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            reason = self.cancel_reason or "cancelled"
            if self.cancel_reason is not None and task is not None:
                # Our own cancellation (client gone or shutdown): absorb it so the
                # cancellation can still be recorded and answered.
                task.uncancel()
            if self.phase is Phase.RUNNING:
                await self._cancelled(reason)
            if self.cancel_reason is None:
                raise
        except ApiError as exc:
            await self._failed(exc)
        except Exception:
            log.exception("call %s failed unexpectedly", self.call.trajectory_id)
            await self._failed(
                ApiError("The proxy failed while handling this request.", code="proxy_error")
            )

    async def _run(self) -> None:
        body = await self._load_body()
        request = parse_chat_request(body)
        self._request = request
        self._model = request.model
        if self._span is not None:
            self._span.update_name(f"chat {request.model}")
        self._recorded = storage_policy.apply_to_request(
            recorded_request(orjson.loads(body)), self.call.store
        )
        try:
            plan = self.deps.router.plan(request.model)
        except NotFound:
            # An unroutable call is a trajectory too; it ends now, so with no delay
            # its end event records the request.
            if self.deps.requested_delay <= 0:
                await self._publish_requested()
            raise
        if self.call.mode == "runbook":
            plan = await run_budget.priced_plan(
                self.deps.runs, self.call.trajectory_id, request.model, plan
            )
        self._use(plan[0])
        await self._schedule_requested()
        deadline = asyncio.timeout(self.deps.total_timeout)
        try:
            # The deadline bounds the upstream part only: once the answer is complete,
            # recording it and sending the last frame must not turn into a timeout.
            # Retries and fallbacks run inside it, so they never extend the call.
            async with deadline:
                self._reached_upstream = True
                last, payload = await self._try_targets(plan, request, body, deadline)
        except TimeoutError:
            if not deadline.expired():
                raise
            raise UpstreamTimeout(
                f"The call exceeded the proxy's limit of {self.deps.total_timeout:g}s.",
                code="upstream_timeout",
            ) from None
        await self._finished()
        await self._final(last, payload)

    async def _load_body(self) -> bytes:
        ref = self.call.body_ref
        if ref is None:
            return self._body
        try:
            body = await self.deps.claims.get(ref)
        except Exception as exc:
            log.warning("claim %s for %s unreadable: %r", ref, self.call.trajectory_id, exc)
            raise Unavailable(
                "The request body could not be loaded; please retry.", code="claim_unavailable"
            ) from None
        try:
            await self.deps.claims.delete(ref)
        except Exception as exc:  # the object store's own limits expire it later
            log.warning("claim %s not deleted: %r", ref, exc)
        return body

    def _use(self, route: Route) -> None:
        self._provider = route.provider.name
        self._upstream_model = route.upstream_model

    async def _try_targets(
        self,
        plan: tuple[Route, ...],
        request: ChatCompletionRequest,
        body: bytes,
        deadline: asyncio.Timeout,
    ) -> tuple[Frame, bytes]:
        """The last frame of the first target that answers: each target retried per
        :class:`RetryPolicy`, then the next. Raises the last error when all failed."""
        policy = self.deps.retry
        loop = asyncio.get_running_loop()
        error: ApiError | None = None
        for route in plan:
            self._use(route)
            upstream = UpstreamCall(model=route.upstream_model, request=request, body=body)
            retries = 0
            while True:
                # Nothing reached the client yet: a retry starts from a clean slate.
                self._acc = Accumulator()
                started = time.monotonic()
                try:
                    if self.call.stream:
                        await self._stream(route.provider, upstream)
                        result = Frame.DONE, b""
                    else:
                        result = Frame.RESPONSE, await self._complete(route.provider, upstream)
                except ApiError as exc:
                    self._attempt(route, started, exc.status, exc.code or exc.error_type, exc)
                    if self._chunk_sent or not policy.falls_back(exc):
                        raise
                    error = exc
                    wait = policy.delay(retries, exc)
                    when = deadline.when()
                    if wait is None or (when is not None and loop.time() + wait >= when):
                        break
                    log.info(
                        "call %s: %s/%s failed (%s), retry in %.2fs",
                        self.call.trajectory_id,
                        route.provider.name,
                        route.upstream_model,
                        exc.code,
                        wait,
                    )
                    await policy.sleep(wait)
                    retries += 1
                    continue
                except asyncio.CancelledError:
                    self._attempt(route, started, None, "cancelled", None)
                    raise
                self._attempt(route, started, 200, None, None)
                return result
        assert error is not None  # a plan has at least one target
        raise error

    def _attempt(
        self,
        route: Route,
        started: float,
        status: int | None,
        error: str | None,
        exc: ApiError | None,
    ) -> None:
        # No HTTP answer at all (connection failure, timeout): no status to record.
        if exc is not None and exc.code in {"upstream_unreachable", "upstream_connect_timeout"}:
            status = None
        self._attempts.append(
            AttemptRecord(
                provider=route.provider.name,
                model=route.upstream_model,
                status=status,
                error=error,
                latency_ms=max(0.0, (time.monotonic() - started) * 1000),
                retry_after=None if exc is None else exc.retry_after,
            )
        )

    async def _complete(self, provider: Provider, upstream: UpstreamCall) -> bytes:
        """The ``r`` frame's payload: the response plus ``jetty_metadata``."""
        response = await provider.complete(upstream)
        self._acc.add_response(response)
        return with_metadata(to_json(response), self._metadata)

    async def _stream(self, provider: Provider, upstream: UpstreamCall) -> None:
        """Every ``c`` frame of the stream, the usage chunk last (if asked for)."""
        acc = self._acc
        first = True
        usage_chunk: ChatChunk | None = None
        async with aclosing(provider.stream(upstream)) as chunks:
            async for chunk in chunks:
                acc.add_chunk(chunk)
                if not chunk.choices and chunk.usage is not None:
                    usage_chunk = chunk  # held back: sent last, and only if asked for
                    continue
                data = to_json(chunk, _WITHOUT_USAGE if chunk.usage is not None else None)
                if first:
                    data = with_metadata(data, self._metadata)
                    first = False
                self._chunk_sent = True  # even if the send fails: it may have gone out
                await self._send(Frame.CHUNK, data)
        if self.call.include_usage:
            if usage_chunk is None:
                usage_chunk = acc.usage_chunk(self._usage()[0], self._model)
            data = to_json(usage_chunk)
            await self._send(Frame.CHUNK, with_metadata(data, self._metadata) if first else data)

    # --- frames -----------------------------------------------------------------------

    async def _send(self, kind: Frame, payload: bytes = b"") -> None:
        try:
            await self.deps.nc.publish(self.reply, kind.value + payload)
        except MaxPayloadError:
            raise UpstreamError(
                "The response is larger than the message bus allows.", code="response_too_large"
            ) from None
        except NatsError as exc:
            raise Unavailable(
                f"The reply could not be sent ({exc.__class__.__name__}).", code="bus_unavailable"
            ) from None
        self.last_sent = time.monotonic()

    async def _final(self, kind: Frame, payload: bytes = b"") -> None:
        self._close()
        try:
            await self.deps.nc.publish(self.reply, kind.value + payload)
        except NatsError as exc:
            # The gateway will time the call out; the trajectory is already recorded.
            log.warning("last frame of %s not sent: %r", self.call.trajectory_id, exc)

    # --- events -----------------------------------------------------------------------

    async def _schedule_requested(self) -> None:
        delay = self.deps.requested_delay
        if delay <= 0:
            await self._publish_requested()
        else:
            loop = asyncio.get_running_loop()
            self._requested_timer = loop.call_later(delay, self._requested_due)

    def _requested_due(self) -> None:
        """Timer: the call outlasted the delay, so a reader should see it running."""
        self._requested_timer = None
        if self.phase is not Phase.RUNNING or self._requested_out:
            return
        self._requested_out = True
        self._requested_task = asyncio.create_task(
            self._publish_requested(), name=f"requested-{self.call.trajectory_id}"
        )

    async def _publish_requested(self) -> bool:
        """Publish ``completion.requested``; False if it could not even be built (then
        the end event records the request instead)."""
        assert self._recorded is not None
        self._requested_out = True
        data = CompletionRequested(
            task=self.call.task,
            mode=self.call.mode,
            step_index=self.call.step_index,
            model=self._model,
            provider=self._provider,
            stream=self.call.stream,
            ingress=self.call.ingress,
            request=self._recorded,
            received_at=datetime.fromtimestamp(self.call.received_at, UTC),
        )
        try:
            await self.deps.publisher.publish(
                self.call.collection, self.call.trajectory_id, data, wait=False
            )
        except Exception as exc:
            # Not lost: the end event carries the request side instead.
            log.warning(
                "completion.requested of %s not published: %r", self.call.trajectory_id, exc
            )
            self._requested_out = False
            return False
        return True

    async def _request_side(self) -> dict[str, Any]:
        """The request fields of the end event: empty when ``completion.requested``
        went out (or is going out) for this call."""
        if self._requested_timer is not None:
            self._requested_timer.cancel()
            self._requested_timer = None
        if self._requested_task is not None:
            # Its outcome decides who records the request; shielded so that a
            # cancelled call does not cancel the publication it waits for.
            await asyncio.shield(self._requested_task)
        if self._requested_out or self._recorded is None:
            return {}
        return {"request": self._recorded, "stream": self.call.stream, "ingress": self.call.ingress}

    def _usage(self) -> tuple[CompletionUsage, bool]:
        """The upstream's usage, or our estimate (flagged) when it gave none."""
        if self._acc.usage is not None:
            return self._acc.usage, False
        return self._acc.estimated_usage(self._request), True

    def _ended_fields(self, *, finished: bool) -> dict[str, Any]:
        ended = time.time()
        received = self.call.received_at
        first = self._acc.first_token_at
        usage: Usage | None = None
        # Estimate only where tokens were really spent: a finished call, or one that
        # reached the upstream and produced something before it failed or was cancelled.
        spent = finished or (self._reached_upstream and self._acc.has_output)
        if self._acc.usage is not None or spent:
            counted, estimated = self._usage()
            usage = usage_record(counted, estimated=estimated)
        return {
            "task": self.call.task,
            "mode": self.call.mode,
            "step_index": self.call.step_index,
            "model": self._model,
            "provider": self._provider,
            "response": storage_policy.apply_to_response(
                self._acc.response_record(), self.call.store
            ),
            "usage": usage,
            "attempts": self._attempts,
            "cost_usd": None if usage is None else self._cost(usage),
            "latency_ms": max(0.0, (ended - received) * 1000),
            "ttft_ms": max(0.0, (first - received) * 1000) if first is not None else None,
            "received_at": datetime.fromtimestamp(received, UTC),
            "ended_at": datetime.fromtimestamp(ended, UTC),
            "key_id": self.call.key_id,
        }

    def _cost(self, usage: Usage) -> str | None:
        """The call's cost as a decimal string, or ``None`` when the price of the
        provider's model (or of a kind of token it used) is unknown. An estimated
        usage is priced too: the estimate is flagged on the usage."""
        if self._upstream_model is None:
            return None
        try:
            counts = pricing.usage_counts(
                usage.prompt_tokens, usage.completion_tokens, usage.details
            )
        except ValueError as exc:
            # Inconsistent counts from the upstream: unpriced rather than a guess.
            log.warning("call %s unpriced: %s", self.call.trajectory_id, exc)
            return None
        return pricing.cost_text(pricing.cost_for(self._provider, self._upstream_model, counts))

    async def _publish_end(
        self, data: CompletionFinished | CompletionFailed | CompletionCancelled
    ) -> None:
        # The event goes out first; what only feeds metrics, traces and limits is done
        # while JetStream stores it. The last frame still waits for the acknowledgement.
        pending = await self.deps.publisher.begin(
            self.call.collection, self.call.trajectory_id, data
        )
        try:
            await self._account(data)
        finally:
            await pending.wait()

    async def _account(
        self, data: CompletionFinished | CompletionFailed | CompletionCancelled
    ) -> None:
        observe_end(data, self.call.ingress, self._provider != "none")
        if self._span is not None:
            trace_end(self._span, self.call, data)
        if self.call.mode == "runbook" and data.usage is not None:
            await self._add_run_spend(data.usage, data.cost_usd)
        if self.call.key_id is not None and self.deps.key_usage is not None:
            if self.call.key_metered:
                await self._add_key_usage(data)
            else:
                tokens = data.usage.total_tokens if data.usage is not None else 0
                self.deps.key_usage.add_later(
                    self.call.key_id,
                    tokens=tokens,
                    cost_usd=data.cost_usd if data.usage is not None else "0",
                    at=data.ended_at,
                )

    async def _add_key_usage(
        self, data: CompletionFinished | CompletionFailed | CompletionCancelled
    ) -> None:
        assert self.deps.key_usage is not None and self.call.key_id is not None
        tokens = data.usage.total_tokens if data.usage is not None else 0
        cost = data.cost_usd if data.usage is not None else "0"
        try:
            await asyncio.wait_for(
                self.deps.key_usage.add(
                    self.call.key_id, tokens=tokens, cost_usd=cost, at=data.ended_at
                ),
                timeout=2.0,
            )
        except Exception as exc:  # the event is the record; this only feeds limits
            log.warning("usage of %s not added to its key: %r", self.call.trajectory_id, exc)

    async def _add_run_spend(self, usage: Usage, cost_usd: str | None) -> None:
        """Count a runbook agent's call against its run's budget (bounded: the event
        above is the record; this only feeds the gateway's next budget check)."""
        if self.deps.runs is None:
            return
        try:
            await asyncio.wait_for(
                self.deps.runs.add_spend(
                    self.call.trajectory_id,
                    prompt_tokens=usage.prompt_tokens,
                    completion_tokens=usage.completion_tokens,
                    total_tokens=usage.total_tokens,
                    cost_usd=cost_usd,
                ),
                timeout=2.0,
            )
        except (RunStateError, NatsError, TimeoutError) as exc:
            log.warning("spend of %s not added to its run: %r", self.call.trajectory_id, exc)

    async def _finished(self) -> None:
        self._end()
        fields = self._ended_fields(finished=True) | await self._request_side()
        await self._publish_end(CompletionFinished(**fields))

    async def _failed(self, error: ApiError) -> None:
        if self.phase is not Phase.RUNNING:
            # The terminal event is out; only the last frame can still be missing.
            if self.phase is Phase.ENDED:
                await self._final(Frame.ERROR, orjson.dumps(error.to_dict()))
            return
        self._end()
        record = ErrorRecord(
            status=error.status,
            type=error.error_type,
            message=error.message,
            code=error.code,
            param=error.param,
        )
        fields = self._ended_fields(finished=False) | await self._request_side()
        await self._publish_end(CompletionFailed(**fields, error=record))
        await self._final(Frame.ERROR, orjson.dumps(error.to_dict()))

    async def _cancelled(self, reason: str) -> None:
        self._end()
        fields = self._ended_fields(finished=False) | await self._request_side()
        await self._publish_end(CompletionCancelled(**fields, reason=reason))
        if reason == PROXY_SHUTDOWN and self.phase is Phase.ENDED:
            # The client is still there: tell it to retry elsewhere.
            error = Unavailable(
                "The model proxy is shutting down; please retry.", code="proxy_shutdown"
            )
            await self._final(Frame.ERROR, orjson.dumps(error.to_dict()))
        self._close()
