"""``POST /v1/chat/completions`` with ``jetty.runbook: true``: validate the run,
queue it for a runner, then stream its progress (SSE) or wait for its result.

Everything is checked before anything runs: the collection is the token's, the
agent is one we run, the model routes to a configured provider, and every entry of
``file_paths`` exists in the collection (400 naming the first missing one). Then
the run's live state goes into the run-state bucket and ``runbook.requested`` onto
the events stream, where the runners' durable work-queue consumer picks it up.
The client's connection is not the run: a client that goes away leaves the run
going, to be polled with ``GET /api/v1/trajectories/{id}``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import orjson
from aiohttp import web
from nats.errors import Error as NatsError

from services.gateway.files import object_store, store_unavailable
from services.gateway.middleware import TRAJECTORY_HEADER
from services.gateway.runbook_progress import RunWatch, answer_json, stream_progress
from services.gateway.state import Gateway
from shared import subjects
from shared.chatwire import Frame, parse_frame
from shared.errors import ApiError, InvalidRequest, Unavailable
from shared.events.runbook import Budget, RunbookRequested
from shared.ids import new_trajectory_id
from shared.limits import RunLimits
from shared.objectstore import ObjectStoreError
from shared.openai_chat import ChatCompletionRequest, Message
from shared.redact import recorded_request
from shared.runs import RunState
from shared.tokens import TokenRecord

DEFAULT_PROMPT = "Carry out the runbook."
_RESOLVE_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class RunbookPlan:
    trajectory_id: str
    collection: str
    task: str
    event: RunbookRequested


def _text(message: Message) -> str:
    if isinstance(message.content, str):
        return message.content
    if message.content is None:
        return ""
    return "\n".join(part.text for part in message.content if hasattr(part, "text"))


def _forbid(message: str, param: str, code: str) -> ApiError:
    return ApiError(message, param=param, code=code, status=403, error_type="permission_error")


async def check_model(gw: Gateway, model: str) -> None:
    """Ask a proxy whether ``model`` routes to a configured provider; its 404 (with
    the hint of which key is missing) goes to the client as it is."""
    try:
        reply = await gw.nc.request(subjects.MODEL_RESOLVE, model.encode(), _RESOLVE_TIMEOUT)
    except (NatsError, TimeoutError):
        raise Unavailable(
            "No model proxy answered; please retry shortly.", code="proxy_unavailable"
        ) from None
    kind, payload = parse_frame(reply.data)
    if kind is Frame.ERROR:
        raise ApiError.from_dict(orjson.loads(payload))


async def _check_files(gw: Gateway, collection: str, paths: list[str]) -> None:
    if not paths:
        return
    for index, path in enumerate(paths):
        parts = path.split("/")
        if (
            not path
            or path.startswith("/")
            or any(p in ("", ".", "..") for p in parts)
            or any(ord(ch) < 32 for ch in path)
        ):
            raise InvalidRequest(
                f"Invalid file path {path!r}: use the 'path' an upload answered with "
                "(e.g. 'uploads/data.csv').",
                param=f"jetty.file_paths[{index}]",
                code="invalid_file_path",
            )
    store = await object_store(gw)
    for index, path in enumerate(paths):
        try:
            info = await store.stat(f"{collection}/{path}")
        except ObjectStoreError as exc:
            raise store_unavailable(exc) from None
        if info is None:
            raise InvalidRequest(
                f"File '{path}' does not exist in collection '{collection}': upload it "
                "first with POST /api/v1/files/upload.",
                param=f"jetty.file_paths[{index}]",
                code="file_not_found",
            )


async def plan_runbook(gw: Gateway, auth: TokenRecord, req: ChatCompletionRequest) -> RunbookPlan:
    """Validate a runbook request; raise the client's error or return what to queue."""
    jetty = req.jetty
    assert jetty is not None and jetty.runbook
    if auth.trajectory_id is not None:
        raise _forbid(
            "A runbook's own token cannot start runbooks.", "jetty.runbook", "token_scope"
        )
    collection = jetty.collection or auth.collection
    if collection != auth.collection:
        raise _forbid(
            f"This API token cannot run runbooks in collection '{collection}'.",
            "jetty.collection",
            "collection_forbidden",
        )
    if jetty.agent is None:
        raise InvalidRequest(
            "Runbook mode needs 'jetty.agent': one of claude-code, codex, gemini-cli.",
            param="jetty.agent",
            code="missing_required_parameter",
        )
    runbook = "\n\n".join(_text(m) for m in req.messages if m.role in ("system", "developer"))
    prompt = "\n\n".join(_text(m) for m in req.messages if m.role == "user")
    if not runbook.strip() and not prompt.strip():
        raise InvalidRequest(
            "A runbook needs a system message (the runbook) or a user message (the task).",
            param="messages",
            code="invalid_value",
        )
    settings = gw.settings
    timeout = jetty.timeout_s if jetty.timeout_s is not None else settings.runbook_timeout
    if timeout > settings.runbook_max_timeout:
        raise InvalidRequest(
            f"'jetty.timeout_s' may be at most {settings.runbook_max_timeout:g} seconds here.",
            param="jetty.timeout_s",
            code="invalid_value",
        )
    limits = jetty.limits or RunLimits()
    for name, maximum in settings.over(limits):
        raise InvalidRequest(
            f"'jetty.limits.{name}' may be at most {maximum:g} here.",
            param=f"jetty.limits.{name}",
            code="invalid_value",
        )
    asked = jetty.budget
    max_tokens = asked.max_tokens if asked and asked.max_tokens else settings.runbook_max_tokens
    max_cost = asked.max_cost_usd if asked and asked.max_cost_usd else settings.runbook_max_cost_usd
    budget = Budget(
        max_tokens=max_tokens,
        max_cost_usd=format(Decimal(str(max_cost)).quantize(Decimal("0.0000000001")), "f"),
    )
    await check_model(gw, req.model)
    file_paths = list(dict.fromkeys(jetty.file_paths or []))
    await _check_files(gw, collection, file_paths)
    trajectory_id = new_trajectory_id()
    event = RunbookRequested(
        task=req.task,
        agent=jetty.agent,
        model=req.model,
        runbook=runbook,
        prompt=prompt.strip() or DEFAULT_PROMPT,
        file_paths=file_paths,
        budget=budget,
        timeout_s=timeout,
        limits=limits,
        requested_at=datetime.now(UTC),
        request=recorded_request(req.model_dump(mode="json", exclude_none=True)),
    )
    return RunbookPlan(trajectory_id, collection, req.task, event)


async def run_runbook(
    request: web.Request, gw: Gateway, auth: TokenRecord, req: ChatCompletionRequest
) -> web.StreamResponse:
    plan = await plan_runbook(gw, auth, req)
    event = plan.event
    # Listen before queueing, so not even the first status change can be missed.
    watch = await RunWatch.open(gw, plan.collection, plan.trajectory_id, event)
    try:
        try:
            await gw.runs.create(
                RunState(
                    trajectory_id=plan.trajectory_id,
                    collection=plan.collection,
                    task=plan.task,
                    agent=event.agent,
                    model=event.model,
                    budget=event.budget,
                    updated_at=event.requested_at,
                )
            )
            await gw.publisher.publish(plan.collection, plan.trajectory_id, event)
        except (NatsError, TimeoutError) as exc:
            raise Unavailable(
                f"The run could not be queued ({exc.__class__.__name__}); please retry.",
                code="queue_unavailable",
            ) from None
        headers = {TRAJECTORY_HEADER: plan.trajectory_id}
        base_url = gw.settings.public_url or str(request.url.origin())
        if req.stream:
            return await stream_progress(
                request, gw, watch, headers, base_url, include_usage=req.include_usage
            )
        deadline = time.monotonic() + gw.settings.runbook_wait
        await watch.wait_end(max(0.0, deadline - time.monotonic()))
        body, done = await answer_json(gw, watch, base_url)
        return web.Response(
            body=body, status=200 if done else 202, content_type="application/json", headers=headers
        )
    finally:
        await watch.close()
