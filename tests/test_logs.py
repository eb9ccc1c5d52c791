"""Structured logs: with ``JETTY_LOG_FORMAT=json`` every service writes one JSON
object per line with service and level, the gateway one access line per request
with the collection, key id and trajectory id. Secrets fed through every path
(tokens in each header a wire format uses, the Gemini ``?key=``, prompt bodies,
the provider key) never appear in any line of any log."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest

from jetty_cli.testing import StackFactory, TestStack
from tests.fakes.openai_upstream import FakeUpstream

PROVIDER_KEY = "sk-provider-secret-7f3a9c1e5b"
BODY_SECRET = "body-secret-5d2e8b4c1a9f"
BAD_TOKEN = "jt_bad-secret-token-0a1b2c3d4e5f"


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream(api_key=PROVIDER_KEY)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture(scope="module")
def json_stack(stack_factory: StackFactory, upstream: FakeUpstream) -> TestStack:
    return stack_factory(
        env={
            "JETTY_LOG_FORMAT": "json",
            "OPENAI_API_KEY": PROVIDER_KEY,
            "OPENAI_BASE_URL": upstream.base_url,
        }
    )


async def asend(url: str, headers: dict[str, str], body: dict[str, Any] | None) -> int:
    """:func:`send` off the event loop (the fake upstream runs on it)."""
    return await asyncio.to_thread(send, url, headers, body)


def send(url: str, headers: dict[str, str], body: dict[str, Any] | None) -> int:
    request = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **headers},
        method="GET" if body is None else "POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        with exc:
            exc.read()
            return exc.code


async def test_json_logs_carry_context_and_never_a_secret(json_stack: TestStack) -> None:
    base, token = json_stack.base_url, json_stack.token
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": BODY_SECRET}]}
    anthropic = {"model": "gpt-4o-mini", "max_tokens": 8, "messages": chat["messages"]}
    gem = base + "/v1beta/models/gpt-4o-mini:generateContent?key="
    auth = {"Authorization": f"Bearer {token}"}
    gemini = {"contents": [{"role": "user", "parts": [{"text": BODY_SECRET}]}]}
    statuses = [
        await asend(base + "/v1/chat/completions", {"Authorization": f"Bearer {token}"}, chat),
        await asend(base + "/v1/chat/completions", {"Authorization": f"Bearer {BAD_TOKEN}"}, chat),
        await asend(base + "/v1/messages", {"x-api-key": token}, anthropic),
        await asend(base + "/v1/messages", {"x-api-key": BAD_TOKEN}, anthropic),
        await asend(base + "/v1/responses", {"Authorization": f"Bearer {token}"},
             {"model": "gpt-4o-mini", "input": BODY_SECRET}),
        await asend(gem + token, {}, gemini),
        await asend(gem + BAD_TOKEN, {}, gemini),
        await asend(base + "/v1/chat/completions", {"Authorization": f"Bearer {token}"},
             {"model": "gpt-4o-mini", "messages": BODY_SECRET}),
        await asend(base + "/api/v1/trajectories", {"Authorization": f"Bearer {token}"}, None),
        await asend(base + "/api/v1/keys", auth, {"name": BODY_SECRET}),
    ]  # fmt: skip
    assert statuses[:2] == [200, 401] and statuses[3] == 401 and statuses[6] == 401
    assert statuses[-1] == 201
    await asyncio.sleep(1.0)  # the recorder's and the proxy's lines of these calls
    lines: list[dict[str, Any]] = []
    for service in json_stack:
        text = service.log_path.read_text()
        for secret in (token, BAD_TOKEN, PROVIDER_KEY, BODY_SECRET):
            assert secret not in text, (service.name, secret)
        for raw in text.splitlines():
            line = json.loads(raw)  # every line is one JSON object
            assert line["service"] == service.name and line["level"] in (
                "debug", "info", "warning", "error", "critical",
            )  # fmt: skip
            lines.append(line)
    access = [line for line in lines if line["logger"] == "jetty.access"]
    assert len(access) >= len(statuses)
    ok = next(a for a in access if a["route"] == "/v1/chat/completions" and a["status"] == 200)
    assert ok["collection"] == json_stack.collection and ok["key_id"].startswith("key_")
    assert ok["trajectory_id"].startswith("tr_") and ok["duration_ms"] > 0
    assert {a["status"] for a in access} >= {200, 401}
