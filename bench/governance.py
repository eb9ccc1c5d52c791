"""What keys, limits and metrics cost on the hot path, and how fast the retention
sweeper deletes (part of ``make bench``; alone: ``python -m bench.governance``).

* **hot path**: the gateway's own middlewares (observe → errors → auth) around a
  handler that does nothing, called in process with a mocked request — so the
  figure is the features' cost and nothing else. *Off*: a key without limits and
  metrics off; *on*: a key with a request limit, a token limit and a monthly
  budget (usage known), metrics on, the access log formatted (to a null stream).
  Interleaved in rounds in the same run; the difference of the medians is the
  cost the features add per call.
* **sweeper**: trajectories projected with their steps into a fresh PostgreSQL
  database, then swept in batches of 500; trajectories deleted per second.
"""

from __future__ import annotations

import asyncio
import io
import logging
import statistics
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, cast

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from services.gateway import observe
from services.gateway.middleware import auth_middleware, errors_middleware
from services.gateway.ratelimit import RateLimiter
from services.gateway.state import GATEWAY
from shared.keys import KeyBudget, KeyLimits, KeyUsage
from shared.logs import JsonFormatter
from shared.tokens import TokenRecord, hash_token

BEGIN, END = "<!-- bench:governance:begin -->", "<!-- bench:governance:end -->"


class _Tokens:
    def __init__(self, records: dict[str, TokenRecord]) -> None:
        self._records = {hash_token(k): r for k, r in records.items()}

    async def resolve(self, token: str) -> TokenRecord | None:
        return self._records.get(hash_token(token))


class _Usage:
    def __init__(self, usage: dict[str, KeyUsage]) -> None:
        self._usage = usage

    def usage(self, key_id: str) -> KeyUsage | None:
        return self._usage.get(key_id)


async def _ok(request: web.Request) -> web.StreamResponse:
    return web.Response(status=200, headers={"X-Jetty-Trajectory-Id": "tr_x"})


def _app(metrics_on: bool, gw: Any) -> web.Application:
    app = web.Application()
    app[GATEWAY] = gw
    app[observe.ENABLED] = metrics_on
    app.router.add_post("/v1/chat/completions", _ok)
    return app


async def _per_call_us(app: web.Application, token: str, n: int) -> list[float]:
    handler = _ok
    for middleware in reversed((observe.observe_middleware, errors_middleware, auth_middleware)):
        handler = _wrap(middleware, handler)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    samples = []
    loop = asyncio.get_running_loop()
    # Plain objects: Mock attribute access is slow.
    protocol = SimpleNamespace(ssl_context=None, peername=None, sockname=None, transport=None)
    template = make_mocked_request("POST", "/v1/chat/completions", headers=headers, app=app)
    # A real route match (the mocked one is made of Mock objects, slow to touch).
    match_info = await app.router.resolve(template)
    match_info.add_app(app)
    for _ in range(n):
        request = make_mocked_request(
            "POST",
            "/v1/chat/completions",
            headers=headers,
            app=app,
            loop=loop,
            protocol=protocol,
            transport=protocol,
            writer=protocol,
            payload=protocol,  # type: ignore[arg-type]
        )
        request._match_info = match_info
        start = time.perf_counter_ns()
        response = await handler(request)
        samples.append((time.perf_counter_ns() - start) / 1000)
        assert response.status == 200, response.status
    return samples


def _wrap(middleware: Any, inner: Any) -> Any:
    async def call(request: web.Request) -> web.StreamResponse:
        return await middleware(request, inner)  # type: ignore[no-any-return]

    return call


async def hot_path(rounds: int = 10, per_round: int = 2000) -> tuple[float, float]:
    """(median µs off, median µs on)."""
    now = datetime.now(UTC)
    plain = TokenRecord(collection="bench", created_at=now, id="key_plain")
    limited = TokenRecord(
        collection="bench",
        created_at=now,
        id="key_limited",
        limits=KeyLimits(requests_per_minute=10**9, tokens_per_minute=10**12),
        budget=KeyBudget(usd=Decimal(10**6), period="month"),
    )
    tokens = _Tokens({"jt_plain": plain, "jt_limited": limited})
    usage = _Usage(
        {
            "key_limited": KeyUsage().add(
                tokens=10, cost_usd="0.001", at=now, minute=int(now.timestamp()) // 60
            )
        }
    )
    limiter = RateLimiter(cast(Any, None), "bench")  # check() is memory only
    gw = SimpleNamespace(tokens=tokens, key_usage=usage, limiter=limiter)
    off_app, on_app = _app(False, gw), _app(True, gw)
    access = logging.getLogger("jetty.access")
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(JsonFormatter("gateway"))
    off, on = [], []
    for _ in range(rounds):
        access.handlers, access.propagate = [], False
        access.setLevel(logging.WARNING)
        off += await _per_call_us(off_app, "jt_plain", per_round)
        access.handlers = [handler]
        access.setLevel(logging.INFO)
        on += await _per_call_us(on_app, "jt_limited", per_round)
        handler.stream = io.StringIO()
    access.handlers, access.propagate = [], True
    return statistics.median(off), statistics.median(on)


async def sweeper_rate(dsn: str, n: int = 20_000) -> tuple[int, float]:
    """(trajectories swept, per second)."""
    import asyncpg

    from services.recorder.projection import apply
    from services.recorder.retention import sweep
    from tests.test_projection import T0, finished

    conn = await asyncpg.connect(dsn)
    try:
        for start in range(0, n, 1000):
            await apply([finished(f"tr_sweep{i:07d}") for i in range(start, start + 1000)], conn)
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        begin = time.perf_counter()
        result = await sweep(pool, T0 + timedelta(days=1), batch=500)
        elapsed = time.perf_counter() - begin
    finally:
        await pool.close()
    return result.trajectories, result.trajectories / elapsed


def section(off: float, on: float, swept: int | None = None, rate: float | None = None) -> str:
    lines = [
        "Keys, limits and metrics on the hot path (the gateway's middlewares in process, "
        "a handler that does nothing; median of 20,000 calls each, interleaved):",
        "",
        "| hot path | per call |",
        "|---|---|",
        f"| plain key, metrics off | {off:.1f} µs |",
        f"| key with request + token limits and a budget, metrics and access log on "
        f"| {on:.1f} µs |",
        f"| added by the features | {on - off:+.1f} µs |",
    ]
    if swept is not None and rate is not None:
        lines += [
            "",
            f"Retention sweeper: {swept:,} trajectories (one step each) deleted in batches "
            f"of 500 at {rate:,.0f} trajectories/s.",
        ]
    return "\n".join(lines)


def write_doc(text: str) -> None:
    from bench.run import DOC

    doc = DOC.read_text()
    if BEGIN not in doc:
        doc += f"\n## Governance\n\n{BEGIN}\n{END}\n"
    before, rest = doc.split(BEGIN, 1)
    after = rest.split(END, 1)[1]
    DOC.write_text(f"{before}{BEGIN}\n{text}\n{END}{after}")


def main(write: bool = True) -> None:
    from jetty_cli.embedded import EmbeddedPostgres
    from jetty_cli.testing import new_database, traversable_tmpdir

    off, on = asyncio.run(hot_path())
    root = traversable_tmpdir("jetty-bench-gov-")
    pg = EmbeddedPostgres(root / "pg", durable=True).start()
    try:
        _, dsn = new_database(pg, migrate=True)
        swept, rate = asyncio.run(sweeper_rate(dsn))
    finally:
        pg.stop()
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = f"Run {stamp}; `python -m bench.governance`.\n\n" + section(off, on, swept, rate)
    print(text)
    if write:
        write_doc(text)


if __name__ == "__main__":
    main()
