"""Keys: scopes, expiry, allowed models, rate limits shared by two gateways, spend
budgets from recorded cost, and the admin API with its events and projection.

A real stack (NATS, PostgreSQL, proxy, recorder, gateway) with the fake OpenAI
upstream behind ``gpt-*`` names, so calls have a real price; a second gateway
process on the same NATS for the shared limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from jetty_cli import procs
from jetty_cli.stack import ServiceProcess
from jetty_cli.testing import StackFactory, TestStack, hermetic_env
from tests.fakes.openai_upstream import FakeUpstream
from tests.test_cli import fetch_record, jetty

KEY = "sk-keys-test-000111222333"
# services/proxy/data/pricing.toml: gpt-4o-mini, USD per 1M tokens.
GPT_4O_MINI_IN = Decimal("0.15")
GPT_4O_MINI_OUT = Decimal("0.60")


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream(api_key=KEY)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture(scope="module")
def keys_stack(stack_factory: StackFactory, upstream: FakeUpstream) -> TestStack:
    return stack_factory(env={"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": upstream.base_url})


@pytest.fixture(scope="module")
def second_gateway(keys_stack: TestStack) -> Iterator[str]:
    """Another gateway replica on the same NATS (as two pods would be)."""
    port = procs.free_port()
    env = keys_stack._env_for("gateway") | {"JETTY_PORT": str(port)}
    config = keys_stack.config
    proc = ServiceProcess(
        "gateway2",
        [config.python, "-m", "services.gateway"],
        env,
        config.log_dir / "gateway2.log",
        config.cwd,
    )
    proc.start()
    url = f"http://127.0.0.1:{port}"
    try:
        procs.wait_until(
            lambda: (
                procs.http_get(url + "/readyz", timeout=1.0)[0] == 200
                if procs.port_open("127.0.0.1", port)
                else False
            ),
            timeout=60,
            interval=0.1,
            describe="the second gateway",
        )
        yield url
    finally:
        proc.stop()


async def http(
    method: str, url: str, token: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, str], Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, json=body, headers=headers) as response,
    ):
        data = await response.json(content_type=None)
        return response.status, dict(response.headers), data


def chat_body(model: str = "mock/echo", text: str = "hello") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


async def create_key(stack: TestStack, **fields: Any) -> dict[str, Any]:
    status, _, body = await http("POST", stack.base_url + "/api/v1/keys", stack.token, fields)
    assert status == 201, body
    return body


async def test_admin_creates_a_key_whose_secret_is_shown_once(keys_stack: TestStack) -> None:
    base = keys_stack.base_url
    created = await create_key(
        keys_stack,
        name="ci",
        scopes=["api"],
        metadata={"team": "data"},
        limits={"requests_per_minute": 100},
    )
    assert created["key"].startswith("jt_") and created["id"].startswith("key_")
    assert created["collection"] == keys_stack.collection
    assert created["scopes"] == ["api"] and created["metadata"] == {"team": "data"}
    assert created["limits"] == {"requests_per_minute": 100, "tokens_per_minute": None}
    status, _, answer = await http(
        "POST", base + "/v1/chat/completions", created["key"], chat_body()
    )
    assert status == 200, answer
    status, _, got = await http("GET", f"{base}/api/v1/keys/{created['id']}", keys_stack.token)
    assert status == 200 and "key" not in got and got["name"] == "ci"
    # A key without a budget has its usage gathered by the proxy and added within
    # about a second.
    deadline = time.monotonic() + 10
    while got["usage"]["calls"] == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        _, _, got = await http("GET", f"{base}/api/v1/keys/{created['id']}", keys_stack.token)
    assert got["usage"]["calls"] == 1 and got["usage"]["total_tokens"] > 0
    assert got["last_used_at"] is not None
    status, _, listed = await http("GET", base + "/api/v1/keys", keys_stack.token)
    assert created["id"] in [k["id"] for k in listed["data"]]
    assert all("key" not in k for k in listed["data"])


async def test_scopes_decide_what_a_key_reaches(keys_stack: TestStack) -> None:
    base = keys_stack.base_url
    reader = (await create_key(keys_stack, scopes=["read"]))["key"]
    api = (await create_key(keys_stack, scopes=["api"]))["key"]
    status, _, body = await http("POST", base + "/v1/chat/completions", reader, chat_body())
    assert status == 403 and body["error"]["code"] == "insufficient_scope"
    status, _, body = await http("GET", base + "/api/v1/trajectories", reader)
    assert status == 200, body
    status, _, body = await http("GET", base + "/v1/models", reader)
    assert status == 200, body
    status, _, body = await http("GET", base + "/api/v1/keys", api)
    assert status == 403 and body["error"]["type"] == "permission_error"
    status, _, body = await http("POST", base + "/api/v1/keys", api, {"name": "escalate"})
    assert status == 403


async def test_an_expired_key_is_refused(keys_stack: TestStack) -> None:
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    key = (await create_key(keys_stack, expires_at=past))["key"]
    status, _, body = await http(
        "POST", keys_stack.base_url + "/v1/chat/completions", key, chat_body()
    )
    assert status == 401 and "expired" in body["error"]["message"]


async def test_a_model_outside_the_allow_list_is_refused_by_name(keys_stack: TestStack) -> None:
    key = (await create_key(keys_stack, allowed_models=["mock/*"]))["key"]
    url = keys_stack.base_url + "/v1/chat/completions"
    status, _, _ = await http("POST", url, key, chat_body("mock/echo"))
    assert status == 200
    status, _, listing = await http("GET", keys_stack.base_url + "/v1/models", key)
    assert status == 200 and [m["id"] for m in listing["data"]] == ["mock/echo"]
    status, _, body = await http("POST", url, key, chat_body("gpt-4o-mini"))
    assert status == 403
    assert (
        body["error"]["code"] == "model_not_allowed" and "gpt-4o-mini" in body["error"]["message"]
    )
    # The Anthropic ingress goes through the same check.
    status, _, body = await http(
        "POST",
        keys_stack.base_url + "/v1/messages",
        key,
        {"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
    )
    assert status == 403 and "gpt-4o" in body["error"]["message"]


async def test_rotation_keeps_the_old_secret_for_its_grace_then_revoke_ends_both(
    keys_stack: TestStack,
) -> None:
    base = keys_stack.base_url
    created = await create_key(keys_stack, name="rotating")
    old = created["key"]
    status, _, rotated = await http(
        "POST",
        f"{base}/api/v1/keys/{created['id']}/rotate",
        keys_stack.token,
        {"grace_seconds": 60},
    )
    assert status == 200 and rotated["key"] != old and rotated["id"] == created["id"]
    for secret in (old, rotated["key"]):
        status, _, _ = await http("POST", base + "/v1/chat/completions", secret, chat_body())
        assert status == 200
    status, _, _ = await http(
        "POST", f"{base}/api/v1/keys/{created['id']}/rotate", keys_stack.token, {"grace_seconds": 0}
    )
    assert status == 200
    status, _, _ = await http("POST", base + "/v1/chat/completions", rotated["key"], chat_body())
    assert status == 401
    status, _, listed = await http("GET", base + "/api/v1/keys", keys_stack.token)
    assert [k["id"] for k in listed["data"]].count(created["id"]) == 1
    status, _, gone = await http("DELETE", f"{base}/api/v1/keys/{created['id']}", keys_stack.token)
    assert status == 200 and gone["deleted"] is True
    status, _, listed = await http("GET", base + "/api/v1/keys", keys_stack.token)
    assert created["id"] not in [k["id"] for k in listed["data"]]
    status, _, _ = await http("GET", f"{base}/api/v1/keys/{created['id']}", keys_stack.token)
    assert status == 404


async def test_bad_admin_input_is_a_clear_400(keys_stack: TestStack) -> None:
    url = keys_stack.base_url + "/api/v1/keys"
    for body, param in (
        ({"scopes": ["root"]}, "scopes.0"),
        ({"limits": {"requests_per_minute": 0}}, "limits.requests_per_minute"),
        ({"budget": {"usd": -1}}, "budget.usd"),
        ({"budget": {"usd": 1, "period": "week"}}, "budget.period"),
        ({"colour": "red"}, "colour"),
        ({"expires_at": "tomorrow"}, "expires_at"),
    ):
        status, _, answer = await http("POST", url, keys_stack.token, body)
        assert status == 400, (body, answer)
        assert answer["error"]["param"] == param


async def test_requests_per_minute_gives_429_with_openai_headers(keys_stack: TestStack) -> None:
    _wait_for_fresh_minute()
    key = (await create_key(keys_stack, limits={"requests_per_minute": 2}))["key"]
    url = keys_stack.base_url + "/v1/chat/completions"
    status, headers, _ = await http("POST", url, key, chat_body())
    assert status == 200
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "1"
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    status, headers, _ = await http("POST", url, key, chat_body())
    assert status == 200 and headers["x-ratelimit-remaining-requests"] == "0"
    status, headers, body = await http("POST", url, key, chat_body())
    assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert headers["x-ratelimit-remaining-requests"] == "0"


async def test_two_gateways_share_a_request_limit(
    keys_stack: TestStack, second_gateway: str
) -> None:
    _wait_for_fresh_minute()
    key = (await create_key(keys_stack, limits={"requests_per_minute": 4}))["key"]
    bases = [keys_stack.base_url, second_gateway]
    statuses = []
    for i in range(8):
        status, _, _ = await http("POST", bases[i % 2] + "/v1/chat/completions", key, chat_body())
        statuses.append(status)
        await asyncio.sleep(0.05)  # a KV write and its watch: a few milliseconds
    assert statuses == [200] * 4 + [429] * 4


async def test_a_budget_stops_the_key_once_its_recorded_cost_reaches_it(
    keys_stack: TestStack,
) -> None:
    base = keys_stack.base_url
    # One call of the fake upstream costs well under a millionth of a dollar per
    # token; a budget of one call's price is spent by the first call.
    created = await create_key(keys_stack, budget={"usd": 0.000001, "period": "month"})
    key = created["key"]
    status, _, answer = await http(
        "POST", base + "/v1/chat/completions", key, chat_body("gpt-4o-mini")
    )
    assert status == 200, answer
    usage = answer["usage"]
    expected = (
        usage["prompt_tokens"] * GPT_4O_MINI_IN + usage["completion_tokens"] * GPT_4O_MINI_OUT
    ) / Decimal(1_000_000)
    status, _, got = await http("GET", f"{base}/api/v1/keys/{created['id']}", keys_stack.token)
    assert Decimal(got["usage"]["spent_usd"]) == expected
    assert got["usage"]["calls"] == 1 and got["last_used_at"] is not None
    assert expected >= Decimal("0.000001")
    status, _, body = await http(
        "POST", base + "/v1/chat/completions", key, chat_body("gpt-4o-mini")
    )
    assert status == 429
    assert body["error"]["code"] == "insufficient_quota"
    assert body["error"]["type"] == "insufficient_quota"
    status, _, spend = await http("GET", base + "/api/v1/keys/spend", keys_stack.token)
    assert status == 200 and Decimal(spend["spent_usd"]) >= expected


async def test_tokens_per_minute_counts_recorded_tokens(keys_stack: TestStack) -> None:
    _wait_for_fresh_minute()
    key = (await create_key(keys_stack, limits={"tokens_per_minute": 5}))["key"]
    url = keys_stack.base_url + "/v1/chat/completions"
    status, headers, answer = await http("POST", url, key, chat_body("gpt-4o-mini"))
    assert status == 200 and headers["x-ratelimit-limit-tokens"] == "5"
    assert answer["usage"]["total_tokens"] >= 5
    status, headers, body = await http("POST", url, key, chat_body("gpt-4o-mini"))
    assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
    assert headers["x-ratelimit-remaining-tokens"] == "0" and "Retry-After" in headers


async def test_every_key_change_is_an_event_in_the_projection(keys_stack: TestStack) -> None:
    base = keys_stack.base_url
    created = await create_key(keys_stack, name="projected", allowed_models=["gpt-4o*"])
    await http(
        "PATCH",
        f"{base}/api/v1/keys/{created['id']}",
        keys_stack.token,
        {"name": "renamed", "budget": {"usd": 5, "period": "total"}},
    )
    await http("DELETE", f"{base}/api/v1/keys/{created['id']}", keys_stack.token)
    conn = await asyncpg.connect(keys_stack.database_url)
    try:
        row = None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            row = await conn.fetchrow("SELECT * FROM api_keys WHERE key_id = $1", created["id"])
            if row is not None and row["revoked_at"] is not None:
                break
            await asyncio.sleep(0.1)
        assert row is not None and row["revoked_at"] is not None
        assert row["name"] == "renamed" and orjson.loads(row["allowed_models"]) == ["gpt-4o*"]
        assert row["version"] == 3 and row["collection"] == keys_stack.collection
    finally:
        await conn.close()


def _wait_for_fresh_minute() -> None:
    """Rate windows are calendar minutes: start a limit test well inside one."""
    if time.time() % 60 > 50:
        time.sleep(61 - time.time() % 60)


def test_jetty_tokens_create_admin_with_limits(nats_url: str, tmp_path: Path) -> None:
    env = {**hermetic_env(), "JETTY_HOME": str(tmp_path), "JETTY_NATS_URL": nats_url}
    result = jetty(
        "tokens", "create", "--collection", "cli-keys", "--name", "ops", "--admin",
        "--allowed-model", "mock/*", "--rpm", "30", "--tpm", "1000",
        "--budget-usd", "2.50", "--budget-period", "month",
        "--expires-at", "2030-01-01T00:00:00Z", "--meta", "team=platform",
        env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = fetch_record(nats_url, result.stdout.strip())
    assert record is not None and record.collection == "cli-keys" and record.name == "ops"
    assert record.scopes == ("api", "admin") and record.allowed_models == ("mock/*",)
    assert record.limits.requests_per_minute == 30 and record.limits.tokens_per_minute == 1000
    assert record.budget is not None and record.budget.usd == Decimal("2.50")
    assert record.budget.period == "month" and record.metadata == {"team": "platform"}
    assert record.expires_at == datetime(2030, 1, 1, tzinfo=UTC)
    bad = jetty("tokens", "create", "--collection", "x", "--budget-usd", "-1", env=env)
    assert bad.returncode == 2 and "--budget-usd" in bad.stderr and bad.stdout == ""


async def test_a_runbooks_inner_calls_count_toward_the_key_that_started_it(
    keys_stack: TestStack,
) -> None:
    """The agent's calls (on the run-scoped token the runner mints from the
    ``runbook.requested`` event) add their cost to the starting key, and that
    key's budget refuses them once it is spent."""
    import nats

    from shared import subjects
    from shared.events.runbook import RunbookRequested
    from shared.tokens import TokenStore, generate_token

    base = keys_stack.base_url
    created = await create_key(
        keys_stack, budget={"usd": 0.000001, "period": "total"}, limits={"tokens_per_minute": 10**6}
    )
    runbook = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Write results/summary.md."},
            {"role": "user", "content": "Go."},
        ],
        "jetty": {"runbook": True, "agent": "claude-code", "task": "metered-run"},
    }
    keys_stack.kill("runner")  # the run stays queued: its agent's calls are made here
    nc = await nats.connect(keys_stack.nats_url)
    try:
        with contextlib.suppress(TimeoutError):
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session,
                session.post(
                    base + "/v1/chat/completions",
                    json=runbook,
                    headers={"Authorization": f"Bearer {created['key']}"},
                ) as response,
            ):
                await response.read()  # waits for the run's result: never, here
        js = nc.jetstream()
        subject = subjects.event_subject(keys_stack.collection, "runbook.requested")
        raw = orjson.loads((await js.get_last_msg(subjects.EVENTS_STREAM, subject)).data)
        event = RunbookRequested.model_validate(raw["data"])
        assert event.task == "metered-run" and event.key is not None
        assert event.key.id == created["id"] and event.key.tokens_per_minute == 10**6
        token = generate_token()
        await TokenStore(js).register_run_token(
            token, keys_stack.collection, raw["trajectory_id"], event.key
        )
        url = base + "/v1/chat/completions"
        status, headers, answer = await http("POST", url, token, chat_body("gpt-4o-mini"))
        assert status == 200, answer
        assert answer["jetty_metadata"]["trajectory_id"] == raw["trajectory_id"]
        assert headers["x-ratelimit-limit-tokens"] == str(10**6)
        usage = answer["usage"]
        expected = (
            usage["prompt_tokens"] * GPT_4O_MINI_IN + usage["completion_tokens"] * GPT_4O_MINI_OUT
        ) / Decimal(1_000_000)
        status, _, got = await http("GET", f"{base}/api/v1/keys/{created['id']}", keys_stack.token)
        assert Decimal(got["usage"]["spent_usd"]) == expected >= Decimal("0.000001")
        assert got["usage"]["calls"] == 1 and got["usage"]["total_tokens"] == usage["total_tokens"]
        status, _, body = await http("POST", url, token, chat_body("gpt-4o-mini"))
        assert status == 429 and body["error"]["code"] == "insufficient_quota", body
        # The key itself is spent too: its next runbook is refused at the door.
        status, _, body = await http("POST", url, created["key"], runbook)
        assert status == 429 and body["error"]["code"] == "insufficient_quota", body
        await http(
            "POST",
            f"{base}/api/v1/trajectories/{raw['trajectory_id']}/cancel",
            keys_stack.token,
            {},
        )
    finally:
        await nc.close()
        keys_stack.start_service("runner")
