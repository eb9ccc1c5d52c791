"""Small helpers several end-to-end test modules share."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from jetty_cli.testing import TestStack
from tests.fakes.anthropic_upstream import FakeAnthropic


async def fetch_trajectory(stack: TestStack, trajectory_id: str) -> dict[str, Any]:
    """``GET /api/v1/trajectories/{id}`` with the stack's token; must answer 200."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{stack.base_url}/api/v1/trajectories/{trajectory_id}",
            headers={"Authorization": f"Bearer {stack.token}"},
        ) as response,
    ):
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


def api_request(
    stack: TestStack, method: str, path: str, body: Any = None, token: str | None = None
) -> tuple[int, Any]:
    """A JSON request to the stack with its token (or ``token``): (status, decoded body)."""
    data = (
        None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    )
    request = urllib.request.Request(
        stack.base_url + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token or stack.token}",
                 "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read() or b"null")


def fake_anthropic_fixture(key: str) -> Callable[[], AsyncIterator[FakeAnthropic]]:
    """A module's scripted Anthropic upstream that accepts ``key``:
    ``anthropic = fake_anthropic_fixture(KEY)`` at module level."""

    @pytest.fixture(scope="module")
    async def anthropic() -> AsyncIterator[FakeAnthropic]:
        fake = FakeAnthropic(key)
        await fake.start()
        yield fake
        await fake.stop()

    return anthropic


def anthropic_env(fake: FakeAnthropic, key: str) -> dict[str, str]:
    """The stack settings that send Anthropic models to ``fake``."""
    return {"ANTHROPIC_API_KEY": key, "ANTHROPIC_BASE_URL": fake.base_url}
