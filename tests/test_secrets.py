"""Secrets: the ``/api/v1/secrets`` routes (values write-only, admin only, 503
without an operator key), and known secrets fed through a real claude-code run —
a collection secret and a ``jetty.secret_params`` one, printed by the agent's
shell and quoted back in its final answer — then searched for in every store the
platform writes: the SSE stream, every event and key-value entry on NATS (its
files on disk), every row of PostgreSQL, every object in the object store and
every service log. They must reach the agent and nowhere else, and the recorded
steps show them masked."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import nats
import orjson
import pytest
from openai import AsyncOpenAI

from jetty_cli.testing import StackFactory, TestStack
from shared.secrets import new_key
from shared.tokens import TokenStore, generate_token
from tests.fakes.anthropic_upstream import FakeAnthropic, Script
from tests.fakes.scenario_claude_code import tool_results
from tests.helpers import api_request, fake_anthropic_fixture

pytestmark = pytest.mark.timeout(300)

KEY = "sk-ant-secrets-test"
MODEL = "claude-sonnet-4-6"


anthropic = fake_anthropic_fixture(KEY)


@pytest.fixture(scope="module")
def sealed(stack_factory: StackFactory, anthropic: FakeAnthropic) -> Iterator[TestStack]:
    stack = stack_factory(
        env={
            "ANTHROPIC_API_KEY": KEY,
            "ANTHROPIC_BASE_URL": anthropic.base_url,
            "JETTY_SECRETS_KEY": new_key(),
        }
    )
    yield stack
    stack.close()


class PrintSecrets:
    """Ask for a shell command printing both variables, then answer with what it
    printed (so the model's answer carries the secrets too)."""

    def __call__(self, body: Any) -> Script:
        results = tool_results(body if isinstance(body, dict) else {})
        if "Bash" in results:
            return Script(text="The shell printed: " + results["Bash"].strip())
        command = {"command": 'printf "%s|%s\\n" "$TEAM_TOKEN" "$RUN_PASSWORD"',
                   "description": "Print two variables"}  # fmt: skip
        return Script(preface="Checking.", tool_calls=[("Bash", orjson.dumps(command).decode())])


def test_secret_routes_without_a_key_are_503(stack: TestStack) -> None:
    status, doc = api_request(stack, "PUT", "/api/v1/secrets/API_TOKEN", {"value": "abcdef"})
    assert status == 503 and doc["error"]["code"] == "secrets_not_configured"


async def test_secret_values_are_write_only_and_admin_only(sealed: TestStack) -> None:
    status, doc = api_request(sealed, "PUT", "/api/v1/secrets/API_TOKEN", {"value": "v-123456"})
    assert status == 200, doc
    assert set(doc) == {"name", "created_at", "updated_at"}
    status, doc = api_request(
        sealed, "POST", "/api/v1/secrets", {"name": "OTHER", "value": "x-9876"}
    )
    assert status == 200, doc
    status, doc = api_request(sealed, "GET", "/api/v1/secrets")
    assert status == 200
    assert {s["name"] for s in doc["data"]} >= {"API_TOKEN", "OTHER"}
    assert "v-123456" not in json.dumps(doc)

    for name, body, code in [
        ("lower", {"value": "abcdef"}, "invalid_secret_name"),
        ("PATH", {"value": "abcdef"}, "invalid_secret_name"),
        ("SHORT", {"value": "abc"}, "invalid_secret_value"),
        ("BIG", {"value": "x" * 40_000}, None),
    ]:
        status, doc = api_request(sealed, "PUT", f"/api/v1/secrets/{name}", body)
        assert status == 400, (name, doc)
        assert code is None or doc["error"]["code"] == code

    # An agent's run-scoped token is never an admin.
    run_token = generate_token()
    nc = await nats.connect(sealed.nats.url)
    try:
        await TokenStore(nc.jetstream()).register(
            run_token, sealed.collection, trajectory_id="tr_" + "0" * 26
        )
    finally:
        await nc.close()
    status, doc = api_request(sealed, "GET", "/api/v1/secrets", token=run_token)
    assert status == 403, doc

    status, doc = api_request(sealed, "DELETE", "/api/v1/secrets/OTHER")
    assert status == 200 and doc["deleted"] is True
    assert api_request(sealed, "DELETE", "/api/v1/secrets/OTHER")[0] == 404


def _files_containing(root: Path, needles: list[bytes]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path}: {n!r}" for n in needles if n in data]
    return found


async def test_secrets_reach_the_agent_and_no_store(
    sealed: TestStack, anthropic: FakeAnthropic
) -> None:
    team, password = "team-" + secrets.token_hex(12), "pw-" + secrets.token_hex(12)
    status, doc = api_request(sealed, "PUT", "/api/v1/secrets/TEAM_TOKEN", {"value": team})
    assert status == 200, doc
    anthropic.respond_with(MODEL, PrintSecrets())

    client = AsyncOpenAI(base_url=sealed.base_url + "/v1", api_key=sealed.token, max_retries=0)
    seen = ""
    last: dict[str, Any] = {}
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Print the variables."},
                  {"role": "user", "content": "Go."}],
        stream=True,
        timeout=240,
        extra_body={"jetty": {"runbook": True, "task": "secrets",
                              "secret_params": {"RUN_PASSWORD": password}}},
    )  # fmt: skip
    async for chunk in stream:
        seen += chunk.model_dump_json()
        last = (chunk.model_extra or {}).get("jetty_metadata") or last
    await client.close()
    assert last["status"] == "completed", last["error"]

    # The agent had both: its shell printed them back to the (fake) provider.
    printed = [tool_results(r.body).get("Bash", "") for r in anthropic.requests]
    assert any(f"{team}|{password}" in p for p in printed), printed

    # The stream, the trajectory and the answer show them masked.
    needles = [team, password]
    assert not any(n in seen for n in needles)
    assert "[secret:TEAM_TOKEN]|[secret:RUN_PASSWORD]" in last["result"]
    trajectory_id = last["trajectory_id"]
    status, view = api_request(sealed, "GET", f"/api/v1/trajectories/{trajectory_id}")
    text = json.dumps(view)
    assert "[secret:RUN_PASSWORD]" in text and not any(n in text for n in needles)
    assert view["steps"], view

    # Every store: the services stopped and NATS too, so all is on disk.
    sealed.stop()
    sealed.nats.stop()
    try:
        raw = [n.encode() for n in needles]
        assert _files_containing(sealed.nats.store_dir, raw) == []
        # (the scan reads the real stream: the run's events are there, in clear)
        assert _files_containing(sealed.nats.store_dir, [b"[secret:RUN_PASSWORD]"])
        assert _files_containing(sealed.s3.data_dir, raw) == []
        assert _files_containing(sealed.config.log_dir, raw) == []
        rows = await _pg_rows(sealed)
        assert not any(n in rows for n in needles)
        assert "[secret:TEAM_TOKEN]" in rows and "[secret:RUN_PASSWORD]" in rows
    finally:
        sealed.heal()


async def _pg_rows(stack: TestStack) -> str:
    conn = await asyncpg.connect(stack.config.database_url, timeout=10)
    try:
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        parts = []
        for row in tables:
            rows = await conn.fetch(f'SELECT to_jsonb(x)::text AS r FROM "{row[0]}" x')
            parts += [r["r"] for r in rows]
        return "\n".join(parts)
    finally:
        await conn.close()
