"""Labels, archiving and Jetty's ``/api/v1/db`` list and stats routes on the shared
real stack, over trajectories made by real chat completions (the mock model)."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from jetty_cli.testing import TestStack, call
from tests.helpers import api_request


def _chat(stack: TestStack, task: str) -> str:
    status, _, doc = call(
        stack.base_url + "/v1/chat/completions",
        stack.token,
        {"model": "mock/echo", "messages": [{"role": "user", "content": "hi"}],
         "jetty": {"task": task}},
    )  # fmt: skip
    assert status == 200, doc
    trajectory_id = doc["jetty_metadata"]["trajectory_id"]
    assert isinstance(trajectory_id, str)
    # Read it once: the trajectory is then in the projection.
    assert api_request(stack, "GET", f"/api/v1/trajectories/{trajectory_id}")[0] == 200
    return trajectory_id


def _listed(stack: TestStack, query: str) -> set[str]:
    status, doc = api_request(stack, "GET", "/api/v1/trajectories?" + query)
    assert status == 200, doc
    return {t["trajectory_id"] for t in doc["data"]}


def test_labels_show_filter_and_come_off(stack: TestStack) -> None:
    task = "labels-" + secrets.token_hex(4)
    first, second = _chat(stack, task), _chat(stack, task)
    status, doc = api_request(
        stack, "POST", f"/api/v1/trajectories/{first}/labels",
        {"key": "team", "value": "data", "author": "ann@example.com"},
    )  # fmt: skip
    assert status == 200, doc
    assert doc["label"]["key"] == "team" and doc["label"]["author"] == "ann@example.com"
    api_request(
        stack, "POST", f"/api/v1/trajectories/{second}/labels", {"key": "team", "value": "ml"}
    )

    status, view = api_request(stack, "GET", f"/api/v1/trajectories/{first}")
    assert [(lb["key"], lb["value"]) for lb in view["labels"]] == [("team", "data")]
    assert _listed(stack, f"task={task}&label=team:data") == {first}
    assert _listed(stack, f"task={task}&label=team:ml") == {second}
    assert _listed(stack, f"task={task}") == {first, second}

    # Setting a key again replaces its value.
    api_request(
        stack, "POST", f"/api/v1/trajectories/{first}/labels", {"key": "team", "value": "ml"}
    )
    assert _listed(stack, f"task={task}&label=team:ml") == {first, second}

    status, doc = api_request(stack, "DELETE", f"/api/v1/trajectories/{first}/labels/team")
    assert status == 200 and doc["deleted"] is True
    status, view = api_request(stack, "GET", f"/api/v1/trajectories/{first}")
    assert "labels" not in view
    assert api_request(stack, "DELETE", f"/api/v1/trajectories/{first}/labels/team")[0] == 404


@pytest.mark.parametrize(
    "body",
    [
        {"key": "a:b", "value": "x"},
        {"key": "", "value": "x"},
        {"key": "team"},
        {"key": "team", "value": "x", "colour": "red"},
        {"key": "team", "value": "x" * 2000},
        b"{not json",
    ],
)
def test_bad_labels_are_400(stack: TestStack, body: Any) -> None:
    trajectory_id = _chat(stack, "labels-bad")
    status, doc = api_request(stack, "POST", f"/api/v1/trajectories/{trajectory_id}/labels", body)
    assert status == 400, doc
    assert doc["error"]["type"] == "invalid_request_error"


async def test_another_collections_trajectory_is_404(stack: TestStack) -> None:
    trajectory_id = _chat(stack, "labels-other")
    other = await stack.create_token("labels-other-" + secrets.token_hex(3))
    for method, path, body in [
        ("POST", f"/api/v1/trajectories/{trajectory_id}/labels", {"key": "k", "value": "v"}),
        ("POST", f"/api/v1/trajectories/{trajectory_id}/archive", {}),
        ("GET", f"/api/v1/trajectories/{trajectory_id}/download", None),
    ]:
        status, doc = api_request(stack, method, path, body, token=other)
        assert status == 404, (path, doc)
    status, doc = api_request(stack, "GET", f"/api/v1/trajectories/{trajectory_id}")
    assert "labels" not in doc


def test_archived_trajectories_are_hidden_and_kept(stack: TestStack) -> None:
    task = "archive-" + secrets.token_hex(4)
    kept, archived = _chat(stack, task), _chat(stack, task)
    status, doc = api_request(stack, "POST", f"/api/v1/trajectories/{archived}/archive", {})
    assert status == 200 and doc["archived"] is True
    assert _listed(stack, f"task={task}") == {kept}
    assert _listed(stack, f"task={task}&archived=true") == {archived}
    assert _listed(stack, f"task={task}&archived=all") == {kept, archived}
    status, view = api_request(stack, "GET", f"/api/v1/trajectories/{archived}")
    assert status == 200 and view["archived"] is True and view["steps"]
    assert api_request(stack, "GET", "/api/v1/trajectories?archived=maybe")[0] == 400

    api_request(stack, "POST", f"/api/v1/trajectories/{archived}/unarchive", {})
    assert _listed(stack, f"task={task}") == {kept, archived}


async def test_jettys_db_list_and_stats(stack: TestStack) -> None:
    task = "db-" + secrets.token_hex(4)
    made = [_chat(stack, task) for _ in range(3)]
    collection = stack.collection
    status, doc = api_request(stack, "GET", f"/api/v1/db/trajectories/{collection}/{task}?limit=2")
    assert status == 200, doc
    assert (doc["total"], doc["limit"], doc["page"], doc["has_more"]) == (3, 2, 1, True)
    assert [t["trajectory_id"] for t in doc["trajectories"]] == made[::-1][:2]
    status, doc = api_request(
        stack, "GET", f"/api/v1/db/trajectories/{collection}/{task}?limit=2&page=2"
    )
    assert [t["trajectory_id"] for t in doc["trajectories"]] == [made[0]]
    assert doc["has_more"] is False

    api_request(stack, "POST", f"/api/v1/trajectories/{made[0]}/archive", {})
    status, doc = api_request(stack, "GET", f"/api/v1/db/trajectories/{collection}/{task}")
    assert doc["total"] == 2

    status, doc = api_request(stack, "GET", f"/api/v1/db/stats/{collection}/{task}?period=24h")
    assert status == 200, doc
    assert doc["total"] == 3 and doc["by_status"]["completed"] == 3 and doc["archived"] == 1
    assert doc["tokens"]["total"] > 0
    assert doc["latency_ms"]["p50"] is not None
    assert doc["latency_ms"]["p50"] <= doc["latency_ms"]["p99"]

    other = await stack.create_token("db-other-" + secrets.token_hex(3))
    status, doc = api_request(stack, "GET", f"/api/v1/db/stats/{collection}/{task}", token=other)
    assert status == 403 and doc["error"]["code"] == "collection_forbidden"
    assert api_request(stack, "GET", f"/api/v1/db/stats/{collection}/{task}?period=1y")[0] == 400
    path = f"/api/v1/db/trajectories/{collection}/{task}?limit=0"
    assert api_request(stack, "GET", path)[0] == 400
