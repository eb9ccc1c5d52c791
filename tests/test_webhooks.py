"""Webhooks end to end: register a URL, get the collection's events POSTed to it
signed per Standard Webhooks (verified by the ``standardwebhooks`` library as the
receiver), retried after a failure with each attempt recorded, and SSRF checks
that refuse internal targets unless the operator allows them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook as Verifier

from jetty_cli.testing import StackFactory, TestStack
from tests.openapi_document import validate_answer

pytestmark = pytest.mark.timeout(180)


class Receiver:
    """An HTTP endpoint on 127.0.0.1 that answers ``fail_first`` requests with 500."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        self.arrived.set()
        if len(self.requests) <= self.fail_first:
            return web.Response(status=500, text="not now")
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture(scope="module")
def hooked(stack_factory: StackFactory) -> Iterator[TestStack]:
    """A stack whose operator allows loopback targets, retrying after 1 s."""
    stack = stack_factory(
        env={"JETTY_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8", "JETTY_WEBHOOK_RETRY_DELAYS": "[1, 1]"}
    )
    yield stack
    stack.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver(fail_first=1)
    await found.start()
    yield found
    await found.stop()


async def api(
    stack: TestStack, method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method,
            stack.base_url + path,
            json=body,
            headers={"Authorization": f"Bearer {stack.token}"},
        ) as response,
    ):
        return response.status, await response.json()


async def test_events_are_delivered_signed_and_retried(
    hooked: TestStack, receiver: Receiver
) -> None:
    spec = {"url": receiver.url, "event_types": ["completion.*"], "description": "test"}
    status, hook = await api(hooked, "POST", "/api/v1/webhooks", spec)
    assert status == 201, hook
    validate_answer("post", "/api/v1/webhooks", status, hook)
    assert hook["secret"].startswith("whsec_") and hook["event_types"] == ["completion.*"]

    # The secret is shown once: listing and reading leave it out.
    status, listed = await api(hooked, "GET", "/api/v1/webhooks")
    validate_answer("get", "/api/v1/webhooks", status, listed)
    [mine] = [h for h in listed["data"] if h["id"] == hook["id"]]
    assert mine["secret"] is None

    body = {
        "model": "mock/echo",
        "messages": [{"role": "user", "content": "ring the bell"}],
        "jetty": {"task": "webhooks"},
    }
    status, completion = await api(hooked, "POST", "/v1/chat/completions", body)
    assert status == 200
    trajectory_id = completion["jetty_metadata"]["trajectory_id"]

    async def delivered() -> dict[str, Any]:
        while True:
            _, page = await api(hooked, "GET", f"/api/v1/webhooks/{hook['id']}/deliveries")
            done = [
                d
                for d in page["data"]
                if d["outcome"] == "delivered" and d["event_type"] == "completion.finished"
            ]
            if done:
                validate_answer("get", "/api/v1/webhooks/{webhook_id}/deliveries", 200, page)
                return {"done": done[0], "all": page["data"]}
            await asyncio.sleep(0.3)

    found = await asyncio.wait_for(delivered(), 60)
    verifier = Verifier(hook["secret"])
    finished = []
    for headers, raw in receiver.requests:
        event = verifier.verify(raw, {k.lower(): v for k, v in headers.items()})
        assert headers["webhook-id"] == event["id"]
        if event["type"] == "completion.finished":
            finished.append(event)
    # The first POST got a 500 and came again, the same event both times.
    assert len(finished) >= 2 and len({e["id"] for e in finished}) == 1
    assert finished[0]["trajectory_id"] == trajectory_id
    attempts = [d for d in found["all"] if d["event_id"] == finished[0]["id"]]
    outcomes = {d["attempt"]: d["outcome"] for d in attempts}
    assert found["done"]["attempt"] >= 2 and "delivered" in outcomes.values()
    assert any(d["status_code"] == 500 for d in attempts)

    # A forged or stale signature does not verify.
    headers, raw = receiver.requests[-1]
    with pytest.raises(Exception, match=r"(?i)signature"):
        Verifier("whsec_" + "A" * 32).verify(raw, {k.lower(): v for k, v in headers.items()})

    status, deleted = await api(hooked, "DELETE", f"/api/v1/webhooks/{hook['id']}")
    assert status == 200 and deleted == {"id": hook["id"], "deleted": True}
    status, gone = await api(hooked, "GET", f"/api/v1/webhooks/{hook['id']}")
    assert status == 404
    validate_answer("get", "/api/v1/webhooks/{webhook_id}", status, gone)


@pytest.mark.parametrize(
    ("spec", "param"),
    [
        ({"url": "http://127.0.0.1:9/hook", "event_types": ["*"]}, "url"),
        ({"url": "http://169.254.169.254/latest", "event_types": ["*"]}, "url"),
        ({"url": "http://10.1.2.3/x", "event_types": ["*"]}, "url"),
        ({"url": "http://[::1]/x", "event_types": ["*"]}, "url"),
        ({"url": "ftp://example.org/x", "event_types": ["*"]}, "url"),
        ({"url": "http://user:pw@example.org/x", "event_types": ["*"]}, "url"),
        ({"url": "https://example.org/x", "event_types": ["runbook.exploded"]}, "event_types[0]"),
        ({"url": "https://example.org/x", "event_types": []}, "event_types"),
    ],
)
async def test_bad_registrations_are_refused(
    stack: TestStack, spec: dict[str, Any], param: str
) -> None:
    """The shared stack allows no internal networks: loopback, link-local and
    private targets are refused, as are other schemes and unknown event types."""
    status, error = await api(stack, "POST", "/api/v1/webhooks", spec)
    assert status == 400, error
    assert error["error"]["param"] == param
    validate_answer("post", "/api/v1/webhooks", status, error)


async def test_only_admin_keys_manage_webhooks(stack: TestStack) -> None:
    api_key = await stack.create_token(stack.collection)  # scope 'api' only
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            stack.base_url + "/api/v1/webhooks", headers={"Authorization": f"Bearer {api_key}"}
        ) as response,
    ):
        assert response.status == 403
        assert (await response.json())["error"]["code"] == "insufficient_scope"
