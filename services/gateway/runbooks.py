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
from typing import Any, cast

import orjson
from aiohttp import web
from nats.errors import Error as NatsError
from nats.js.errors import KeyWrongLastSequenceError
from pydantic import ValidationError

from services.gateway import policy
from services.gateway.files import object_store, store_unavailable
from services.gateway.files_api.inputs import file_inputs, read_runbook_file
from services.gateway.middleware import TRAJECTORY_HEADER
from services.gateway.runbook_defaults import (
    DEFAULT_MODEL,
    infer_agent,
    parse_front_matter,
    render,
)
from services.gateway.runbook_progress import RunWatch, answer_json, stream_progress
from services.gateway.secrets_api.runs import gather as gather_secrets
from services.gateway.secrets_api.runs import scrub_request
from services.gateway.secrets_api.runs import store_for_run as store_secrets
from services.gateway.state import Gateway
from shared import subjects, tracing
from shared.chatwire import Frame, parse_frame
from shared.errors import ApiError, InvalidRequest, Unavailable
from shared.events.runbook import (
    AGENTS,
    AgentName,
    Budget,
    EvaluationSpec,
    RoutineLink,
    RunbookRequested,
)
from shared.ids import new_trajectory_id
from shared.keys import RunKey
from shared.limits import RunLimits
from shared.objectstore import ObjectStoreError
from shared.openai_chat import ChatCompletionRequest, Message
from shared.redact import recorded_request
from shared.runs import RunState
from shared.secrets import Masker
from shared.tokens import TokenRecord

DEFAULT_PROMPT = "Carry out the runbook."
_RESOLVE_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class RunbookPlan:
    trajectory_id: str
    collection: str
    task: str
    event: RunbookRequested
    #: name -> value for the sandbox's environment (never in the event)
    secrets: dict[str, str]


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


def _evaluation(
    asked: dict[str, Any] | None, front: dict[str, Any] | None, front_param: str
) -> EvaluationSpec | None:
    raw, param = (asked, "jetty.evaluation") if asked is not None else (front, front_param)
    if raw is None:
        return None
    try:
        return EvaluationSpec.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "evaluation"
        raise InvalidRequest(
            f"Invalid evaluation: '{where}': {first['msg']}.",
            param=param,
            code="invalid_evaluation",
        ) from None


async def plan_runbook(
    gw: Gateway,
    auth: TokenRecord,
    req: ChatCompletionRequest,
    *,
    trajectory_id: str | None = None,
    routine: RoutineLink | None = None,
) -> RunbookPlan:
    """Validate a runbook request; raise the client's error or return what to queue.
    A routine's firing passes its own (deterministic) trajectory id and its link."""
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
    runbook = "\n\n".join(_text(m) for m in req.messages if m.role in ("system", "developer"))
    runbook_param = "messages"
    if jetty.runbook_path is not None:
        runbook = await read_runbook_file(gw, collection, jetty.runbook_path)
        runbook_param = "jetty.runbook_path"
    parsed = parse_front_matter(runbook, runbook_param)
    front = parsed.front
    variables = {
        k: v if isinstance(v, str) else orjson.dumps(v).decode()
        for k, v in (jetty.template_variables or {}).items()
    }
    runbook = render(parsed.body, variables, "jetty.template_variables")
    prompt = "\n\n".join(_text(m) for m in req.messages if m.role == "user")
    model = front.model if req.model == DEFAULT_MODEL and front.model else req.model
    agent: str | None = jetty.agent
    agent_source = "request"
    if agent is None and front.agent is not None:
        agent, agent_source = front.agent, "front_matter"
    if agent is None:
        agent, agent_source = infer_agent(model), "model"
    if agent is None or agent not in AGENTS:
        raise InvalidRequest(
            f"Runbook mode needs 'jetty.agent' (claude-code, codex, gemini-cli, opencode): "
            f"it cannot be inferred from the model '{model}'.",
            param="jetty.agent",
            code="missing_required_parameter",
        )
    if not runbook.strip() and not prompt.strip():
        raise InvalidRequest(
            "A runbook needs a system message (the runbook) or a user message (the task).",
            param="messages",
            code="invalid_value",
        )
    settings = gw.settings
    timeout = jetty.timeout_s if jetty.timeout_s is not None else front.timeout_s
    if timeout is None:
        timeout = settings.runbook_timeout
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
    policy.check_model(auth, model)
    await check_model(gw, model)
    file_paths = list(dict.fromkeys(jetty.file_paths or []))
    await _check_files(gw, collection, file_paths)
    inputs = await file_inputs(
        gw, collection, jetty.files or [], unzip=jetty.unzip, taken=set(file_paths)
    )
    primary = jetty.primary_outputs if jetty.primary_outputs is not None else front.primary_outputs
    for index, path in enumerate(primary):
        if path.startswith("/") or any(p in ("", ".", "..") for p in path.split("/")):
            raise InvalidRequest(
                f"Invalid output path {path!r}: a path relative to the workspace.",
                param=f"jetty.primary_outputs[{index}]",
                code="invalid_file_path",
            )
    evaluation = _evaluation(jetty.evaluation, front.evaluation, runbook_param)
    secrets = await gather_secrets(gw, collection, jetty.secret_params)
    trajectory_id = trajectory_id or new_trajectory_id()
    event = RunbookRequested(
        task=req.task,
        agent=cast(AgentName, agent),
        model=model,
        runbook=runbook,
        prompt=prompt.strip() or DEFAULT_PROMPT,
        file_paths=file_paths,
        inputs=inputs,
        primary_outputs=list(dict.fromkeys(primary)),
        agent_source=agent_source,
        runbook_path=jetty.runbook_path,
        secret_names=sorted(secrets),
        routine=routine,
        evaluation=evaluation,
        budget=budget,
        key=RunKey.of(auth, auth.id) if auth.id else None,
        timeout_s=timeout,
        limits=limits,
        requested_at=datetime.now(UTC),
        request=recorded_request(scrub_request(req.model_dump(mode="json", exclude_none=True))),
    )
    return RunbookPlan(trajectory_id, collection, req.task, event, secrets)


async def queue_run(gw: Gateway, plan: RunbookPlan, *, event_id: str | None = None) -> bool:
    """Store the run's secrets and live state, then publish ``runbook.requested``.
    False when the run's state already existed (a routine's firing taken over from
    a replica that stopped half-way): its event is published again with the same
    ``event_id``, which JetStream de-duplicates."""
    event = plan.event
    created = True
    try:
        if plan.secrets:
            await store_secrets(gw, plan.trajectory_id, plan.secrets)
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
                    traceparent=tracing.inject().get("traceparent"),
                )
            )
        except KeyWrongLastSequenceError:
            if event_id is None:
                raise
            created = False
        await gw.publisher.publish(plan.collection, plan.trajectory_id, event, event_id=event_id)
    except (NatsError, TimeoutError) as exc:
        raise Unavailable(
            f"The run could not be queued ({exc.__class__.__name__}); please retry.",
            code="queue_unavailable",
        ) from None
    return created


async def run_runbook(
    request: web.Request, gw: Gateway, auth: TokenRecord, req: ChatCompletionRequest
) -> web.StreamResponse:
    plan = await plan_runbook(gw, auth, req)
    event = plan.event
    # Listen before queueing, so not even the first status change can be missed.
    watch = await RunWatch.open(gw, plan.collection, plan.trajectory_id, event)
    masked = bool(plan.secrets)
    if masked:
        gw.publisher.masks.acquire(plan.trajectory_id, Masker(plan.secrets))
    try:
        await queue_run(gw, plan)
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
        if masked:
            gw.publisher.masks.release(plan.trajectory_id)
        await watch.close()
