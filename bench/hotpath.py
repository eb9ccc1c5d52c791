"""``python -m bench.hotpath``: where the CPU of one recorded call goes.

Starts PostgreSQL, the fake OpenAI upstream and a stack (NATS, the services),
pins every server process to the last core and this load generator to the
first (on a machine with two or more cores), runs non-streaming calls at
concurrency 1 and 32 and reports, per process, the CPU it spent per call and
its resident memory; PostgreSQL counts the postmaster and all its children.
It waits until every call is a trajectory in PostgreSQL before reading the
counters, so the recorder's work is inside the figure.

Quick to run (about a minute); ``make bench`` carries the full tables.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import psutil

from bench.loadgen import Result, run
from jetty_cli import procs
from jetty_cli.embedded import EmbeddedPostgres
from jetty_cli.testing import StackFactory, TestStack, traversable_tmpdir

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-bench-upstream"
BODY = orjson.dumps(
    {
        "model": "openai/gpt-4o-mini",
        "messages": [{"role": "user", "content": "Summarise the plot of Hamlet in one sentence."}],
    }
)


@dataclass
class Tracked:
    name: str
    root: psutil.Process
    with_children: bool = False

    def members(self) -> list[psutil.Process]:
        found = [self.root]
        if self.with_children:
            with contextlib.suppress(psutil.NoSuchProcess):
                found += self.root.children(recursive=True)
        return found


def cpu_seconds(procs_: list[psutil.Process]) -> dict[int, float]:
    out: dict[int, float] = {}
    for p in procs_:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return out


def rss_mb(procs_: list[psutil.Process]) -> float:
    total = 0
    for p in procs_:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 1e6


def postmaster(pg: EmbeddedPostgres) -> psutil.Process:
    return psutil.Process(int((pg.data_dir / "postmaster.pid").read_text().split()[0]))


def tracked(stack: TestStack, pg: EmbeddedPostgres) -> list[Tracked]:
    out = [Tracked(s.name, psutil.Process(s.pid)) for s in stack if s.pid is not None and s.alive]
    assert stack.nats.pid is not None
    out.append(Tracked("nats-server", psutil.Process(stack.nats.pid)))
    out.append(Tracked("postgresql", postmaster(pg), with_children=True))
    return out


def pin(stack_procs: list[Tracked], upstream: int) -> str:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return "not pinned (one core)"
    # The servers on the last core; this process and the fake upstream on the others.
    server, client = {cores[-1]}, set(cores[:-1])
    for t in stack_procs:
        for p in t.members():
            try:
                for thread in p.threads():
                    os.sched_setaffinity(thread.id, server)
            except (psutil.NoSuchProcess, OSError):
                continue
    os.sched_setaffinity(0, client)
    os.sched_setaffinity(upstream, client)
    return f"servers on core {cores[-1]}, load generator and fake upstream on {sorted(client)}"


async def wait_recorded(dsn: str, expected: int, timeout: float = 180.0) -> int:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        while True:
            count: int = await conn.fetchval("select count(*) from trajectories")
            if count >= expected or time.monotonic() > deadline:
                return count
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def measure(
    stack: TestStack, pg: EmbeddedPostgres, concurrency: int, calls: int
) -> tuple[Result, dict[str, float], dict[str, float], int]:
    gw = int(stack.base_url.rsplit(":", 1)[1])
    headers = {"Authorization": f"Bearer {stack.token}"}
    path = "/v1/chat/completions"
    # Count before the warm-up and wait for exactly the warm-up calls made: the
    # count read after it already held some of them, so waiting for "that + 250"
    # waited for calls that never came (the whole timeout, every phase).
    before = await wait_recorded(stack.database_url, 0, 0)
    warm = await run(
        "127.0.0.1", gw, path, BODY, headers, concurrency=concurrency, requests=200, warmup=0
    )
    base = await wait_recorded(stack.database_url, before + len(warm.latencies) + warm.errors, 30)
    ts = tracked(stack, pg)
    before = {t.name: cpu_seconds(t.members()) for t in ts}
    result = await run(
        "127.0.0.1", gw, path, BODY, headers,
        concurrency=concurrency, requests=calls, max_seconds=300, warmup=0,
    )  # fmt: skip
    recorded = await wait_recorded(stack.database_url, base + calls)
    per_call: dict[str, float] = {}
    rss: dict[str, float] = {}
    for t in ts:
        members = t.members()
        after = cpu_seconds(members)
        spent = sum(v - before[t.name].get(pid, 0.0) for pid, v in after.items())
        per_call[t.name] = spent / max(1, len(result.latencies)) * 1000
        rss[t.name] = rss_mb(members)
    return result, per_call, rss, recorded - base


def report(label: str, result: Result, per_call: dict[str, float], rss: dict[str, float],
           recorded: int) -> str:  # fmt: skip
    lines = [
        f"{label}: {len(result.latencies)} ok, {result.errors} errors, "
        f"p50 {result.pct(50):.2f} ms, p99 {result.pct(99):.2f} ms, {result.rps:,.0f} req/s, "
        f"{recorded} recorded",
        "| process | CPU ms per call | RSS MB |",
        "|---|---|---|",
    ]
    for name, ms in per_call.items():
        lines.append(f"| {name} | {ms:.3f} | {rss[name]:.0f} |")
    lines.append(f"| **all** | **{sum(per_call.values()):.3f}** | {sum(rss.values()):.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=10000)
    parser.add_argument("--c1-calls", type=int, default=2000)
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args()
    root = traversable_tmpdir("jetty-hotpath-")
    pg = EmbeddedPostgres(root / "pg", durable=True).start()
    port = procs.free_port()
    fake = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.openai_upstream", "--port", str(port),
         "--api-key", KEY],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    factory = StackFactory(root / "stacks", lambda: pg)
    try:
        stack = factory(
            env={
                "OPENAI_API_KEY": KEY,
                "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1",
                "JETTY_LOG_LEVEL": "WARNING",
            }
        )
        pinned = "not pinned" if args.no_pin else pin(tracked(stack, pg), fake.pid)
        print(pinned, flush=True)
        for c, n in ((1, args.c1_calls), (32, args.calls)):
            r, per_call, rss, recorded = asyncio.run(measure(stack, pg, c, n))
            print(report(f"c={c}", r, per_call, rss, recorded), flush=True)
    finally:
        factory.close_all()
        fake.terminate()
        fake.wait(10)
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
