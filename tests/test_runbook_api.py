"""Runbook requests at the gateway: validation before anything runs, the scope of
run-scoped tokens, queueing, and cancelling a queued run — on a real stack whose
runner is stopped, so nothing here needs an agent."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import nats
import pytest

from jetty_cli.testing import StackFactory, TestStack, call
from shared.events.runbook import Budget
from shared.runs import RunState, RunStates
from shared.tokens import TokenStore, generate_token
from tests.openapi import validate

COLLECTION = "default"


@pytest.fixture(scope="module")
def queued(stack_factory: StackFactory) -> TestStack:
    """A stack answering stream:false runbooks after half a second; a test that needs
    runs to stay queued stops its runner (the guard restarts it afterwards)."""
    return stack_factory(env={"JETTY_RUNBOOK_WAIT": "0.5"})


def _runbook(**jetty: Any) -> dict[str, Any]:
    block = {"runbook": True, "agent": "claude-code", "collection": COLLECTION} | jetty
    return {
        "model": "mock/echo",
        "messages": [
            {"role": "system", "content": "Summarise the CSV into results/summary.md."},
            {"role": "user", "content": "Go."},
        ],
        "jetty": {k: v for k, v in block.items() if v is not None},
    }


def _post(stack: TestStack, body: dict[str, Any], token: str | None = None) -> tuple[int, Any]:
    status, _, doc = call(stack.base_url + "/v1/chat/completions", token or stack.token, body)
    return status, doc


async def _upload(stack: TestStack, name: str, data: bytes) -> str:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=name, content_type="text/csv")
    form.add_field("collection", COLLECTION)
    headers = {"Authorization": f"Bearer {stack.token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(stack.base_url + "/api/v1/files/upload", data=form, headers=headers) as r,
    ):
        assert r.status == 200, await r.text()
        path = (await r.json())["path"]
        assert isinstance(path, str)
        return path


@pytest.mark.parametrize(
    ("jetty", "status", "param", "code"),
    [
        ({"agent": None}, 400, "jetty.agent", "missing_required_parameter"),
        ({"agent": "aider"}, 400, "jetty.agent", "invalid_value"),
        ({"collection": "someone-else"}, 403, "jetty.collection", "collection_forbidden"),
        ({"file_paths": ["../etc/passwd"]}, 400, "jetty.file_paths[0]", "invalid_file_path"),
        ({"file_paths": ["/abs/path.csv"]}, 400, "jetty.file_paths[0]", "invalid_file_path"),
        ({"timeout_s": 10**6}, 400, "jetty.timeout_s", "invalid_value"),
        ({"budget": {"max_tokens": 0}}, 400, "jetty.budget.max_tokens", "invalid_value"),
        ({"budget": {"dollars": 1}}, 400, "jetty.budget.dollars", "invalid_value"),
    ],
)
def test_invalid_runbooks_fail_before_anything_runs(
    queued: TestStack, jetty: dict[str, Any], status: int, param: str, code: str
) -> None:
    got, doc = _post(queued, _runbook(**jetty))
    assert got == status, doc
    assert doc["error"]["param"] == param
    assert doc["error"]["code"] == code


async def test_a_missing_file_path_is_named(queued: TestStack) -> None:
    present = await _upload(queued, "present.csv", b"a,b\n1,2\n")
    got, doc = _post(queued, _runbook(file_paths=[present, "uploads/missing.csv"]))
    assert got == 400
    assert doc["error"]["param"] == "jetty.file_paths[1]"
    assert doc["error"]["code"] == "file_not_found"
    assert "uploads/missing.csv" in doc["error"]["message"]


def test_an_unroutable_model_is_refused(queued: TestStack) -> None:
    body = _runbook() | {"model": "nosuchprovider/some-model"}
    got, doc = _post(queued, body)
    assert got == 404, doc
    assert doc["error"]["code"] == "model_not_found"


async def _connect(stack: TestStack) -> Any:
    return await nats.connect(stack.nats_url)


async def _run_token(stack: TestStack, trajectory_id: str) -> str:
    nc = await _connect(stack)
    try:
        token = generate_token()
        await TokenStore(nc.jetstream()).register(token, COLLECTION, trajectory_id=trajectory_id)
        return token
    finally:
        await nc.close()


async def test_a_run_token_reaches_only_the_model_endpoints(queued: TestStack) -> None:
    token = await _run_token(queued, "tr_0000000000000000000000")
    for method, path in [
        ("GET", "/api/v1/trajectories"),
        ("GET", "/api/v1/trajectories/tr_0000000000000000000000"),
        ("POST", "/api/v1/files/upload"),
        ("POST", "/api/v1/trajectories/tr_0000000000000000000000/cancel"),
    ]:
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method, queued.base_url + path, headers={"Authorization": f"Bearer {token}"}
            ) as response,
        ):
            doc = await response.json()
            assert response.status == 403, (path, doc)
            assert doc["error"]["code"] == "token_scope"
    # A model endpoint is reachable, but this token's run does not exist.
    got, doc = _post(
        queued,
        {"model": "mock/echo", "messages": [{"role": "user", "content": "hi"}]},
        token=token,
    )
    assert got == 403 and doc["error"]["code"] == "run_not_active"
    # And it cannot start a runbook.
    got, doc = _post(queued, _runbook(), token=token)
    assert got == 403 and doc["error"]["code"] == "token_scope"


async def test_a_run_token_call_is_a_step_of_its_run_and_counts_against_the_budget(
    queued: TestStack,
) -> None:
    """The agent's calls are recorded in the run's trajectory, each with its own step
    index; once the spend reaches the budget the next call is refused."""
    trajectory_id = "tr_" + "0" * 8 + "1" + "a" * 12
    nc = await _connect(queued)
    try:
        runs = RunStates(nc.jetstream())
        await runs.create(
            RunState(
                trajectory_id=trajectory_id,
                collection=COLLECTION,
                task="budgeted",
                agent="claude-code",
                model="mock/echo",
                status="running",
                budget=Budget(max_tokens=1),
                updated_at=datetime.now(UTC),
            )
        )
        token = await _run_token(queued, trajectory_id)
        chat = {"model": "mock/echo", "messages": [{"role": "user", "content": "count me"}]}
        got, doc = _post(queued, chat, token=token)
        assert got == 200, doc
        assert doc["jetty_metadata"]["trajectory_id"] == trajectory_id
        assert doc["jetty_metadata"]["mode"] == "runbook"
        state = await runs.get(trajectory_id)
        assert state is not None
        assert state.model_calls == 1
        assert state.spent_tokens == doc["usage"]["total_tokens"] > 1
        assert state.next_step == 2
        got, doc = _post(queued, chat, token=token)
        assert got == 403, doc
        assert doc["error"]["code"] == "budget_exceeded"
        state = await runs.get(trajectory_id)
        assert state is not None and state.budget_exceeded and state.model_calls == 1
    finally:
        await nc.close()


async def test_a_queued_run_waits_for_a_runner_and_can_be_cancelled(queued: TestStack) -> None:
    queued.kill("runner")
    got, doc = _post(queued, _runbook(task="queued-task"))
    assert got == 202, doc
    validate("CreateChatCompletionResponse", doc)
    meta = doc["jetty_metadata"]
    trajectory_id = meta["trajectory_id"]
    assert meta["status"] == "pending"
    assert meta["mode"] == "runbook"
    assert doc["choices"][0]["message"]["content"] == (
        f"Runbook {trajectory_id} is pending; poll {meta['poll_url']} for its result."
    )
    url = queued.base_url + f"/api/v1/trajectories/{trajectory_id}"
    status, _, view = call(url, queued.token)
    assert status == 200 and view["status"] == "pending"

    status, _, answer = call(url + "/cancel", queued.token, {})
    assert (status, answer["status"]) == (200, "cancelled")
    status, _, again = call(url + "/cancel", queued.token, {})
    assert status == 409 and again["error"]["code"] == "run_ended"
    deadline = time.monotonic() + 10
    while True:
        status, _, view = call(url, queued.token)
        if view.get("status") == "cancelled" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert view["status"] == "cancelled"
    status, _, same = call(
        queued.base_url + f"/api/v1/db/trajectory/{COLLECTION}/queued-task/{trajectory_id}",
        queued.token,
    )
    assert status == 200 and same["trajectory_id"] == trajectory_id
    status, _, _ = call(
        queued.base_url + f"/api/v1/db/trajectory/{COLLECTION}/other-task/{trajectory_id}",
        queued.token,
    )
    assert status == 404
    status, _, _ = call(
        queued.base_url + f"/api/v1/db/trajectory/elsewhere/queued-task/{trajectory_id}",
        queued.token,
    )
    assert status == 404


def test_cancelling_an_unknown_run_is_404(queued: TestStack) -> None:
    url = queued.base_url + "/api/v1/trajectories/tr_0000000000000000000009/cancel"
    status, _, doc = call(url, queued.token, {})
    assert status == 404 and doc["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("budget", "tokens", "dollars", "over"),
    [
        (Budget(max_tokens=100), 99, "5", False),
        (Budget(max_tokens=100), 100, "0", True),
        (Budget(max_cost_usd="0.0100000000"), 10**9, "0.0099999999", False),
        (Budget(max_cost_usd="0.01"), 0, "0.0100000000", True),
        (Budget(max_tokens=100, max_cost_usd="1"), 5, "1.5", True),
        (Budget(), 10**12, "999999", False),
    ],
)
def test_the_budget_is_reached_by_either_limit_exactly(
    budget: Budget, tokens: int, dollars: str, over: bool
) -> None:
    state = RunState(
        trajectory_id="tr_0000000000000000000000",
        collection=COLLECTION,
        task="t",
        agent="codex",
        model="m",
        budget=budget,
        spent_tokens=tokens,
        spent_usd=dollars,
        updated_at=datetime.now(UTC),
    )
    assert state.over_budget() is over
