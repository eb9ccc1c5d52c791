"""The console's speed: list pages, filters, a 2,000-step runbook page, live steps.

Seeds one collection with COPY (``rows`` trajectories over 30 days, a tenth of
them runbooks with an agent, plus one runbook of ``steps`` steps whose model
calls carry realistic request bodies), then times, through the real gateway with
a signed-in session (loopback HTTP, so the figures are server time plus a few
tens of microseconds):

* the trajectories page, first and a later page (cursor);
* each filter alone and in combinations;
* the 2,000-step trajectory page (time and HTML size) and one step body;
* live: a running runbook's page open over SSE; each ``RunbookStep`` published
  on the bus is timed until the browser-side stream carries its row (bus ->
  recorder -> PostgreSQL -> gateway -> SSE).

``python -m bench.console [--rows N]`` runs it alone; ``make bench`` runs it
within the whole benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import nats
import orjson

from jetty_cli.testing import StackFactory, TestStack, traversable_tmpdir
from shared.bus import EventPublisher
from shared.events.runbook import RunbookRequested, RunbookStarted, RunbookStep
from shared.ids import new_trajectory_id

COLLECTION = "bench-console"
TASKS = [f"task-{i:02d}" for i in range(50)]
MODELS = ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4-6", "gemini-2.5-pro", "mock/echo", "o3"]
AGENTS = ["claude-code", "codex", "gemini-cli"]
STATUSES = ["completed"] * 90 + ["failed"] * 6 + ["cancelled"] * 2 + ["running"] * 2
TRAJECTORY_COLUMNS = [
    "trajectory_id", "collection", "task", "mode", "status", "model", "created_at",
    "completed_at", "latency_ms", "ttft_ms", "prompt_tokens", "completion_tokens",
    "total_tokens", "cost_usd",
]  # fmt: skip


def _tid(i: int) -> str:
    return f"tr_bench{i:017d}"[:25]


async def seed(pool: asyncpg.Pool, rows: int) -> float:
    """COPY ``rows`` trajectories (and a runbook row for each tenth); seconds taken."""
    rng = random.Random(9)
    now = datetime.now(UTC)
    started = time.perf_counter()
    batch: list[tuple[Any, ...]] = []
    runbooks: list[tuple[Any, ...]] = []
    async with pool.acquire() as conn:
        for i in range(rows):
            created = now - timedelta(seconds=rng.uniform(0, 30 * 86400))
            runbook = i % 10 == 0
            status = rng.choice(STATUSES)
            latency = rng.uniform(200, 9000)
            prompt, completion = rng.randint(10, 30000), rng.randint(1, 2000)
            batch.append(
                (
                    _tid(i), COLLECTION, rng.choice(TASKS), "runbook" if runbook else "passthrough",
                    status, rng.choice(MODELS), created, created + timedelta(milliseconds=latency),
                    latency, latency / 5, prompt, completion, prompt + completion,
                    Decimal(rng.randint(0, 5_000_000)) / Decimal(10_000_000),
                )
            )  # fmt: skip
            if runbook:
                runbooks.append((_tid(i), COLLECTION, batch[-1][2], f"ev_{i}", rng.choice(AGENTS)))
            if len(batch) >= 100_000:
                await _copy(conn, batch, runbooks)
                batch, runbooks = [], []
        await _copy(conn, batch, runbooks)
        await conn.execute("ANALYZE trajectories; ANALYZE runbooks")
    return time.perf_counter() - started


async def _copy(conn: Any, batch: list[tuple[Any, ...]], runbooks: list[tuple[Any, ...]]) -> None:
    if batch:
        await conn.copy_records_to_table("trajectories", records=batch, columns=TRAJECTORY_COLUMNS)
    if runbooks:
        await conn.copy_records_to_table(
            "runbooks",
            records=runbooks,
            columns=["trajectory_id", "collection", "task", "identity_event_id", "agent"],
        )


async def seed_long_run(pool: asyncpg.Pool, steps: int) -> str:
    """One completed claude-code run of ``steps`` steps: model calls (each with a
    growing conversation as its request, as agents send), assistant messages, tool
    calls and results; returns its id."""
    trajectory_id = new_trajectory_id()
    start = datetime.now(UTC) - timedelta(hours=1)
    rows = []
    history: list[dict[str, str]] = [{"role": "user", "content": "Refactor the parser."}]
    kinds = ["completion", "message", "tool_call", "tool_result"]
    for i in range(steps):
        kind = kinds[i % 4]
        at = start + timedelta(milliseconds=i * 700)
        request = response = usage = detail = None
        cost = None
        if kind == "completion":
            history = [*history, {"role": "assistant", "content": f"turn {i}: " + "x" * 300}][-40:]
            request = orjson.dumps({"model": "claude-sonnet-4-6", "messages": history}).decode()
            response = orjson.dumps({"content": f"Working on step {i}", "tool_calls": []}).decode()
            usage = orjson.dumps({"prompt_tokens": 9000 + i, "completion_tokens": 120,
                                  "total_tokens": 9120 + i}).decode()  # fmt: skip
            cost = Decimal("0.0271")
        elif kind == "message":
            detail = orjson.dumps({"text": f"I'll edit module {i}. " * 20}).decode()
        elif kind == "tool_call":
            detail = orjson.dumps({"tool_name": "Edit", "tool_call_id": f"toolu_{i}",
                                   "tool_input": {"file_path": f"/workspace/src/m{i}.py",
                                                  "old_string": "a" * 400,
                                                  "new_string": "b" * 400}}).decode()  # fmt: skip
        else:
            detail = orjson.dumps({"tool_name": "Edit", "tool_call_id": f"toolu_{i - 1}",
                                   "text": "The file has been updated. " * 40,
                                   "is_error": False}).decode()  # fmt: skip
        rows.append(
            (trajectory_id, i, COLLECTION, "long-run", "runbook", kind, "completed",
             "anthropic" if kind == "completion" else None,
             "claude-sonnet-4-6" if kind == "completion" else None,
             request, response, usage, 650.0 if kind == "completion" else None,
             120.0 if kind == "completion" else None, at, at + timedelta(milliseconds=600),
             cost, detail)
        )  # fmt: skip
    async with pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO trajectories (trajectory_id, collection, task, mode, status, model,
               created_at, completed_at, latency_ms, prompt_tokens, completion_tokens,
               total_tokens, cost_usd)
               VALUES ($1, $2, 'long-run', 'runbook', 'completed', 'claude-sonnet-4-6', $3, $4,
                       $5, 9000000, 60000, 9060000, 13.55)""",
            trajectory_id,
            COLLECTION,
            start,
            start + timedelta(milliseconds=steps * 700),
            steps * 700.0,
        )
        await conn.execute(
            """INSERT INTO runbooks (trajectory_id, collection, task, identity_event_id, agent,
               requested_at, started_at, started_event_id, end_status, ended_at)
               VALUES ($1, $2, 'long-run', 'ev_long', 'claude-code', $3, $3, 'ev_s', 'completed',
                       $4)""",
            trajectory_id,
            COLLECTION,
            start,
            start + timedelta(milliseconds=steps * 700),
        )
        await conn.copy_records_to_table(
            "steps",
            records=rows,
            columns=[
                "trajectory_id", "step_index", "collection", "task", "mode", "kind", "status",
                "provider", "model", "request", "response", "usage", "latency_ms", "ttft_ms",
                "started_at", "ended_at", "cost_usd", "detail",
            ],
        )  # fmt: skip
    return trajectory_id


async def _time(http: aiohttp.ClientSession, url: str, n: int) -> tuple[float, float, int]:
    """(p50 ms, max ms, bytes) of ``n`` GETs after one warm-up."""
    async with http.get(url) as r:
        assert r.status == 200, (url, r.status, (await r.text())[:500])
        size = len(await r.read())
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        async with http.get(url) as r:
            await r.read()
            assert r.status == 200
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), max(times), size


async def _sign_in(stack: TestStack, token: str) -> aiohttp.ClientSession:
    http = aiohttp.ClientSession(base_url=stack.base_url, cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with http.post("/ui/login", data={"token": token}) as r:
        assert r.status == 200, await r.text()
    return http


FILTERS = [
    ("task", "task=task-07"),
    ("status (failed)", "status=failed"),
    ("mode (runbook)", "mode=runbook"),
    ("model", "model=o3"),
    ("agent", "agent=codex"),
    ("since 24h", "since=24h"),
    ("min cost $0.45", "min_cost=0.45"),
    ("id prefix", "q=tr_bench00000000004"),
    ("task + status", "task=task-07&status=failed"),
    ("status + mode + model", "status=completed&mode=runbook&model=o3"),
    ("agent + status", "agent=codex&status=failed"),
    ("task + since + until", "task=task-07&since=7d&until=24h"),
    ("model + min cost", "model=gpt-4o&min_cost=0.4"),
    ("everything", "task=task-07&status=completed&mode=runbook&model=o3&agent=codex&since=30d"),
]


async def _live(stack: TestStack, http: aiohttp.ClientSession, n: int) -> list[float]:
    """Milliseconds from publishing each step to its row arriving on the SSE."""
    stack.kill("runner")  # the run stays as we make it: no agent takes it
    nc = await nats.connect(stack.nats_url)
    publisher = EventPublisher(nc, nc.jetstream(), "bench", 512 * 1024)
    trajectory_id = new_trajectory_id()
    now = datetime.now(UTC)
    await publisher.publish(
        COLLECTION,
        trajectory_id,
        RunbookRequested(
            task="live", agent="claude-code", model="claude-sonnet-4-6", runbook="Go.",
            prompt="Go.", timeout_s=600, requested_at=now,
        ),
    )  # fmt: skip
    await publisher.publish(
        COLLECTION,
        trajectory_id,
        RunbookStarted(task="live", started_at=now, runner="bench", backend="local",
                       sandbox_id="bench"),
    )  # fmt: skip
    latencies: list[float] = []
    try:
        async with http.get(f"/ui/trajectories/{trajectory_id}/live") as stream:
            assert stream.status == 200
            await _until_frame(stream, "event: update")
            for i in range(n):
                at = datetime.now(UTC)
                t0 = time.perf_counter()
                await publisher.publish(
                    COLLECTION,
                    trajectory_id,
                    RunbookStep(task="live", step_index=i, kind="message", started_at=at,
                                ended_at=at, text=f"step {i}"),
                )  # fmt: skip
                await _until_frame(stream, f'id="row-{i}"')
                latencies.append((time.perf_counter() - t0) * 1000)
                await asyncio.sleep(0.05)
    finally:
        await publisher.flush(timeout=5)
        await nc.close()
        stack.start_service("runner")
    return latencies


async def _until_frame(stream: aiohttp.ClientResponse, needle: str, timeout: float = 30) -> None:
    buffer = ""
    deadline = time.monotonic() + timeout
    while needle not in buffer:
        chunk = await asyncio.wait_for(stream.content.readany(), deadline - time.monotonic())
        if not chunk:
            raise AssertionError("stream ended")
        buffer += chunk.decode()


async def measure(stack: TestStack, rows: int, steps: int = 2000, n: int = 15) -> str:
    pool = await asyncpg.create_pool(stack.database_url, min_size=1, max_size=2)
    try:
        seconds = await seed(pool, rows)
        long_id = await seed_long_run(pool, steps)
    finally:
        await pool.close()
    token = await stack.create_token(COLLECTION, "bench")
    http = await _sign_in(stack, token)
    lines = ["| console page | p50 | max | HTML |", "|---|---|---|---|"]
    print(f"seeded {rows} in {seconds:.1f} s", flush=True)

    def add(what: str, result: tuple[float, float, int]) -> None:
        p50, top, size = result
        lines.append(f"| {what} | {p50:.1f} ms | {top:.1f} ms | {size / 1024:.0f} KB |")

    try:
        add("trajectories, first page", await _time(http, "/ui/trajectories", n))
        async with http.get("/ui/trajectories") as r:
            html = await r.text()
        cursor = html.split("cursor=", 1)[1].split('"', 1)[0].split("&", 1)[0]
        add("trajectories, a later page", await _time(http, f"/ui/trajectories?cursor={cursor}", n))
        for what, query in FILTERS:
            add(f"filter: {what}", await _time(http, f"/ui/trajectories?{query}", n))
        add("tasks, 24 hours", await _time(http, "/ui/tasks?period=24h", n))
        add("tasks, 30 days (every row)", await _time(http, "/ui/tasks?period=30d", n))
        add(f"runbook page, {steps} steps", await _time(http, f"/ui/trajectories/{long_id}", n))
        add(
            "one step body (a model call)",
            await _time(http, f"/ui/trajectories/{long_id}/steps/{steps - 4}", n),
        )
        try:
            live = await _live(stack, http, n)
        except TimeoutError:
            print(stack.log_tails(), flush=True)
            raise
    finally:
        await http.close()
    live_line = (
        f"Live: a published step reached the page's SSE stream in p50 "
        f"{statistics.median(live):.1f} ms, max {max(live):.1f} ms over {len(live)} steps "
        "(bus → recorder → PostgreSQL → gateway → SSE)."
    )
    return (
        f"Seeded {rows:,} trajectories in one collection with COPY in {seconds:.1f} s "
        f"(a tenth runbooks), and one runbook of {steps:,} steps.\n\n"
        + "\n".join(lines)
        + f"\n\n{live_line}"
    )


DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench:console:begin -->", "<!-- bench:console:end -->"


def write_doc(section: str) -> None:
    """Replace the console's section of docs/benchmarks.md (between its markers)."""
    text = DOC.read_text()
    if BEGIN not in text:
        text += f"\n## The console\n\n{BEGIN}\n{END}\n"
    before, rest = text.split(BEGIN, 1)
    after = rest.split(END, 1)[1]
    DOC.write_text(f"{before}{BEGIN}\n{section}\n{END}{after}")


def section(factory: StackFactory, rows: int) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"Run {stamp}; `python -m bench.console --rows {rows}` (and `make bench`).\n\n" + run(
        factory, rows
    )


def run(factory: StackFactory, rows: int) -> str:
    stack = factory(env={"JETTY_LOG_LEVEL": "WARNING"})
    try:
        return asyncio.run(measure(stack, rows))
    finally:
        stack.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure the console's pages.")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--no-write", action="store_true", help="do not update docs")
    args = parser.parse_args()
    from jetty_cli.embedded import EmbeddedPostgres

    root = traversable_tmpdir("jetty-bench-console-")
    pg = EmbeddedPostgres(root / "pg", durable=True).start()
    factory = StackFactory(root / "stacks", lambda: pg)
    try:
        text = section(factory, args.rows)
        print(text)
        if not args.no_write:
            write_doc(text)
    finally:
        factory.close_all()
        pg.stop()


if __name__ == "__main__":
    main()
