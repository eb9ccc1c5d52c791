"""A runbook's progress as the client sees it: SSE ``chat.completion.chunk`` objects
(``stream: true``) or one ``chat.completion`` with the result (``stream: false``).

:class:`RunWatch` follows one run: it subscribes (core NATS) to the collection's
runbook and artifact events before the run is queued, keeps those of its
trajectory, and folds them into the run's current picture (status, timing,
artifacts, the agent's outcome). Usage and cost come from the run's live state,
which the proxies add every model call of the agent to before answering it.

Chunk shape: standard ``chat.completion.chunk`` objects, so the OpenAI SDK
iterates them; ``delta.content`` carries the agent's visible progress (its
messages, one line per tool call, failures, artifacts) and a ``jetty`` field
carries the structured event (``status`` / ``step`` / ``artifact``). The first
chunk has ``jetty_metadata`` with the trajectory id; the last has the final
``jetty_metadata`` (status, artifacts, usage, cost, timing, error) and
``finish_reason: "stop"`` whatever the run's outcome — a failed run is a result,
not a broken stream. An SSE comment line (``: keep-alive``) goes out during
quiet periods.

Every chunk has an SSE ``id``: the opening chunk ``open``, each event's chunk the
event's own id (the envelope's ``id``, the same on the bus), the last chunk
``end``. A client that lost the stream reconnects to
``GET /api/v1/trajectories/{id}/events`` with ``Last-Event-ID`` and gets what came
after that chunk (:mod:`services.gateway.runbook_follow`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from pydantic import ValidationError

from services.gateway.calls import SSE_HEADERS
from services.gateway.state import Gateway
from shared import subjects
from shared.bus import event_data
from shared.db.trajectories import evaluation_summary
from shared.events.registry import AnyEnvelope, decode_envelope
from shared.events.runbook import (
    TERMINAL_STATUSES,
    ArtifactStored,
    RunbookCancelled,
    RunbookCompleted,
    RunbookEvaluated,
    RunbookFailed,
    RunbookRequested,
    RunbookStarted,
    RunbookStep,
)
from shared.runs import RunState

log = logging.getLogger(__name__)

_STATE_POLL = 5.0
OPEN_ID = "open"
END_ID = "end"
_NO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def _ms(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds() * 1000, 3)


class RunWatch:
    """One run's events as they happen, and what they add up to so far."""

    def __init__(
        self, gw: Gateway, collection: str, trajectory_id: str, requested: RunbookRequested
    ) -> None:
        self.gw = gw
        self.collection = collection
        self.trajectory_id = trajectory_id
        self.requested = requested
        self.status = "pending"
        self.started: RunbookStarted | None = None
        self.ended: RunbookCompleted | RunbookFailed | RunbookCancelled | None = None
        self.ended_at: datetime | None = None
        self.artifacts: dict[str, ArtifactStored] = {}
        self.evaluations: dict[int, RunbookEvaluated] = {}
        self._queue: asyncio.Queue[AnyEnvelope] = asyncio.Queue()
        self._subs: list[Subscription] = []
        self._marker = b'"trajectory_id":"' + trajectory_id.encode() + b'"'
        #: the ids of the events queued so far (a follower checks Last-Event-ID here)
        self.seen_ids: set[str] = set()

    @classmethod
    async def open(
        cls, gw: Gateway, collection: str, trajectory_id: str, requested: RunbookRequested
    ) -> RunWatch:
        watch = cls(gw, collection, trajectory_id, requested)
        for subject in subjects.run_progress(collection):
            watch._subs.append(await gw.nc.subscribe(subject, cb=watch._on_event))
        return watch

    async def close(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()
        self._subs.clear()

    async def _on_event(self, msg: Msg) -> None:
        if self._marker not in msg.data:
            return
        try:
            envelope = decode_envelope(msg.data)
            if envelope.data is None:
                data = await event_data(envelope, self.gw.claims)
                envelope = envelope.model_copy(update={"data": data})
        except (ValidationError, NatsError, ValueError) as exc:
            log.warning("unreadable progress event of %s: %r", self.trajectory_id, exc)
            return
        if envelope.trajectory_id == self.trajectory_id and envelope.id not in self.seen_ids:
            self.seen_ids.add(envelope.id)
            self._queue.put_nowait(envelope)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def apply(self, envelope: AnyEnvelope) -> None:
        data = envelope.data
        if isinstance(data, RunbookStarted) and not self.done:
            self.status, self.started = "running", data
        elif isinstance(data, RunbookCompleted | RunbookFailed | RunbookCancelled):
            self.ended, self.ended_at = data, data.ended_at
            self.status = (
                "completed"
                if isinstance(data, RunbookCompleted)
                else "failed"
                if isinstance(data, RunbookFailed)
                else "cancelled"
            )
        elif isinstance(data, ArtifactStored):
            self.artifacts[data.path] = data
        elif isinstance(data, RunbookEvaluated):
            self.evaluations[data.round] = data

    async def next(self, timeout: float) -> AnyEnvelope | None:
        """The next event of this run (applied), or None after ``timeout`` quiet
        seconds. If the run's state says it ended but its end event never came (a
        lost core-NATS message), the status is taken from the state."""
        try:
            envelope = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            await self._reconcile()
            return None
        self.apply(envelope)
        return envelope

    async def _reconcile(self) -> None:
        try:
            state = await self.gw.runs.get(self.trajectory_id)
        except (NatsError, TimeoutError):
            return
        if state is not None and state.status in TERMINAL_STATUSES and not self.done:
            # One more grace period for the end event itself (it carries the outcome).
            try:
                self.apply(await asyncio.wait_for(self._queue.get(), 2.0))
            except TimeoutError:
                self.status = state.status
                self.ended_at = state.updated_at

    async def wait_end(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.done:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await self.next(min(remaining, _STATE_POLL))

    # --- what the client is told ----------------------------------------------------

    def artifact_url(self, base_url: str, path: str) -> str:
        return f"{base_url}/api/v1/trajectories/{self.trajectory_id}/artifacts/{quote(path)}"

    def artifact_json(self, base_url: str, artifact: ArtifactStored) -> dict[str, Any]:
        return {
            "path": artifact.path,
            "url": self.artifact_url(base_url, artifact.path),
            "size_bytes": artifact.size,
            "sha256": artifact.sha256,
            "media_type": artifact.content_type,
        }

    def timing(self) -> dict[str, Any]:
        requested = self.requested.requested_at
        started = self.started.started_at if self.started else None
        return {
            "requested_at": requested,
            "started_at": started,
            "ended_at": self.ended_at,
            "queued_ms": _ms(requested, started),
            "run_ms": _ms(started, self.ended_at),
            "total_ms": _ms(requested, self.ended_at),
        }

    async def metadata(self, base_url: str) -> dict[str, Any]:
        """The run as it stands: what the last chunk and the JSON answer carry."""
        state: RunState | None = None
        with contextlib.suppress(NatsError, TimeoutError):
            state = await self.gw.runs.get(self.trajectory_id)
        usage = None
        cost = None
        if state is not None and state.model_calls:
            usage = {
                "prompt_tokens": state.spent_prompt_tokens,
                "completion_tokens": state.spent_completion_tokens,
                "total_tokens": state.spent_tokens,
            }
            # As for trajectories: unknown (null) when any call had no price.
            cost = None if state.unpriced_calls else float(state.spent_usd)
        error = None
        if isinstance(self.ended, RunbookFailed):
            error = self.ended.error.model_dump(exclude_none=True)
        elif isinstance(self.ended, RunbookCancelled):
            error = {"type": "cancelled", "code": self.ended.reason, "message": "Run cancelled."}
        outcome = self.ended.outcome if self.ended else None
        return {
            "trajectory_id": self.trajectory_id,
            "collection": self.collection,
            "mode": "runbook",
            "task": self.requested.task,
            "agent": self.requested.agent,
            "model": self.requested.model,
            "status": self.status,
            "agent_source": self.requested.agent_source,
            "artifacts": [self.artifact_json(base_url, a) for a in self.artifacts.values()],
            "primary_outputs": [
                self.artifact_json(base_url, self.artifacts[p])
                for p in self.requested.primary_outputs
                if p in self.artifacts
            ],
            "usage": usage,
            "cost_usd": cost,
            "model_calls": state.model_calls if state else 0,
            "timing": self.timing(),
            "result": outcome.result if outcome else None,
            "evaluation": evaluation_summary(
                [
                    e.model_dump(mode="json", exclude={"task"})
                    for _, e in sorted(self.evaluations.items())
                ]
            ),
            "error": error,
            "poll_url": f"{base_url}/api/v1/trajectories/{self.trajectory_id}",
        }


def _step_json(step: RunbookStep) -> dict[str, Any]:
    doc = step.model_dump(mode="json", exclude={"task", "progress"}, exclude_none=True)
    doc["duration_ms"] = _ms(step.started_at, step.ended_at)
    doc["origin"] = "agent"  # the agent's own account (model calls: the gateway's record)
    return doc


class _Chunks:
    def __init__(self, watch: RunWatch, base_url: str) -> None:
        self.watch = watch
        self.base_url = base_url
        self.id = "chatcmpl-" + watch.trajectory_id
        self.created = int(time.time())

    def encode(
        self,
        delta: dict[str, Any],
        *,
        jetty: dict[str, Any] | None = None,
        finish_reason: str | None = None,
        event_id: str | None = None,
        **extra: Any,
    ) -> bytes:
        doc: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.watch.requested.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
        if jetty is not None:
            doc["jetty"] = jetty
        doc.update(extra)
        head = f"id: {event_id}\n".encode() if event_id else b""
        return head + b"data: " + orjson.dumps(doc, option=orjson.OPT_UTC_Z) + b"\n\n"

    def for_event(self, envelope: AnyEnvelope) -> bytes | None:
        data = envelope.data
        watch = self.watch
        if isinstance(data, RunbookStep):
            # The runner's progress line, in the agent's own terms.
            delta = {"content": data.progress + "\n"} if data.progress else {}
            step = {"type": "step", "step": _step_json(data)}
            return self.encode(delta, jetty=step, event_id=envelope.id)
        if isinstance(data, ArtifactStored):
            line = f"Artifact: {data.path} ({data.size} bytes)\n"
            artifact = {"type": "artifact", "artifact": watch.artifact_json(self.base_url, data)}
            return self.encode({"content": line}, jetty=artifact, event_id=envelope.id)
        if isinstance(data, RunbookEvaluated):
            verdict = "passed" if data.passed else "failed"
            line = f"Evaluation round {data.round}: {verdict}" + (
                ", retrying\n" if data.will_retry else "\n"
            )
            doc = data.model_dump(mode="json", exclude={"task"})
            evaluation = {"type": "evaluation", **doc}
            return self.encode({"content": line}, jetty=evaluation, event_id=envelope.id)
        if isinstance(data, RunbookStarted):
            status = {"status": "running", "at": data.started_at, "backend": data.backend}
            return self.encode({}, jetty={"type": "status", **status}, event_id=envelope.id)
        return None  # the end: the caller writes the final chunk


async def stream_progress(
    request: web.Request,
    gw: Gateway,
    watch: RunWatch,
    headers: dict[str, str],
    base_url: str,
    *,
    include_usage: bool,
    resume_after: str | None = None,
) -> web.StreamResponse:
    """Write the run's chunks as they happen. ``resume_after`` (a Last-Event-ID)
    leaves out every chunk up to and including that one."""
    chunks = _Chunks(watch, base_url)
    skipping = resume_after is not None and resume_after != OPEN_ID
    response = web.StreamResponse(status=200, headers={**SSE_HEADERS, **headers})
    await response.prepare(request)
    first = {
        "trajectory_id": watch.trajectory_id,
        "collection": watch.collection,
        "mode": "runbook",
        "task": watch.requested.task,
        "status": "pending",
    }
    try:
        if resume_after is None:
            await response.write(
                chunks.encode(
                    {"role": "assistant", "content": ""},
                    jetty={
                        "type": "status",
                        "status": "pending",
                        "at": watch.requested.requested_at,
                    },
                    event_id=OPEN_ID,
                    jetty_metadata=first,
                )
            )
        while not watch.done:
            envelope = await watch.next(gw.settings.runbook_keepalive)
            if envelope is None:
                if not watch.done:
                    # No blank line after it: once a stream has had an ``id``, the
                    # OpenAI SDK turns a lone blank line into an empty event it
                    # cannot parse (a comment line alone dispatches nothing).
                    await response.write(b": keep-alive\n")
                continue
            if skipping:
                skipping = envelope.id != resume_after
                continue
            encoded = chunks.for_event(envelope)
            if encoded is not None:
                await response.write(encoded)
        metadata = await watch.metadata(base_url)
        extra: dict[str, Any] = {"jetty_metadata": metadata}
        if include_usage:
            extra["usage"] = metadata["usage"] or _NO_USAGE
        status = {"status": watch.status, "at": watch.ended_at}
        if resume_after != END_ID:
            await response.write(
                chunks.encode(
                    {},
                    jetty={"type": "status", **status},
                    finish_reason="stop",
                    event_id=END_ID,
                    **extra,
                )
            )
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    except (ConnectionResetError, asyncio.CancelledError):
        # The client left; the run goes on and stays pollable.
        log.info("runbook %s: client left the progress stream", watch.trajectory_id)
        raise
    return response


async def answer_json(gw: Gateway, watch: RunWatch, base_url: str) -> tuple[bytes, bool]:
    """The ``chat.completion`` of a ``stream: false`` runbook and whether it ended."""
    metadata = await watch.metadata(base_url)
    if watch.done:
        content = metadata["result"]
        if content is None and metadata["error"] is not None:
            content = f"Run {watch.status}: {metadata['error'].get('message', '')}"
    else:
        # Still going (the answer is a 202): a chat completion all the same, so SDKs
        # parse it; the status and where to poll are in the text and the metadata.
        content = (
            f"Runbook {watch.trajectory_id} is {watch.status}; "
            f"poll {metadata['poll_url']} for its result."
        )
    doc = {
        "id": "chatcmpl-" + watch.trajectory_id,
        "object": "chat.completion",
        "created": int(watch.requested.requested_at.timestamp()),
        "model": watch.requested.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        # No model call yet: zeros (the completion object's usage is never null).
        "usage": metadata["usage"] or _NO_USAGE,
        "jetty_metadata": metadata,
    }
    return orjson.dumps(doc, option=orjson.OPT_UTC_Z), watch.done
