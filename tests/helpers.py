"""Small helpers several end-to-end test modules share."""

from __future__ import annotations

from typing import Any

import aiohttp

from jetty_cli.testing import TestStack


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
