"""``make bench``: what the platform adds over calling the upstream directly.

Starts its own NATS, PostgreSQL, fake OpenAI upstream and the three services
(on free ports, so it never collides with a running stack or a test run), then
measures on the same machine in the same run:

* added latency (p50, p99) at concurrency 1, non-streaming: gateway -> proxy ->
  fake upstream versus the fake upstream called directly; and the built-in
  ``mock`` provider (no upstream at all);
* time to first token added for streams;
* requests/s at concurrency 32, every call recorded (the run checks that every
  call it made is in PostgreSQL afterwards);
* runbooks (:mod:`bench.runbook`, :mod:`bench.sandbox`): the local sandbox's start
  time, and a claude-code run through the platform against the same run bare;
* the soak (:mod:`bench.soak`): 20 runbooks, 4 at a time, one hostile.

Before all that, the hot path (:mod:`bench.hotpath`, on its own stack with the
servers pinned to one core): added latency, closed- and open-loop throughput,
CPU per recorded call per process, the recorder's lag, against issue 13's
targets. ``--hot-only`` runs only that; ``--profile`` adds its py-spy flame
graphs; ``--quick`` shortens everything.

Results are printed and written into docs/benchmarks.md between markers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import orjson

from bench import console, governance, hotpath, runbook, soak, translation
from bench.loadgen import Result, run
from jetty_cli import procs
from jetty_cli.embedded import EmbeddedPostgres
from jetty_cli.testing import StackFactory, TestStack, traversable_tmpdir

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
KEY = "sk-bench-upstream"
ANTHROPIC_KEY = "sk-ant-bench"
MESSAGES = [{"role": "user", "content": "Summarise the plot of Hamlet in one sentence."}]


@dataclass
class Row:
    scenario: str
    result: Result
    baseline: Result | None = None
    ttft: bool = False

    def cells(self) -> list[str]:
        r, b = self.result, self.baseline
        values = r.ttfb if self.ttft else None
        p50, p99 = r.pct(50, values), r.pct(99, values)
        added = ""
        if b is not None:
            bvalues = b.ttfb if self.ttft else None
            added = f"+{p50 - b.pct(50, bvalues):.2f} / +{p99 - b.pct(99, bvalues):.2f}"
        return [
            self.scenario,
            f"{len(r.latencies)}",
            f"{p50:.2f}",
            f"{p99:.2f}",
            added or "—",
            f"{r.rps:,.0f}",
            f"{r.errors}",
        ]


def _body(model: str, stream: bool = False) -> bytes:
    return orjson.dumps({"model": model, "messages": MESSAGES, "stream": stream})


async def _measure(
    port: int,
    path: str,
    body: bytes,
    token: str,
    concurrency: int,
    requests: int,
    headers: dict[str, str] | None = None,
) -> Result:
    return await run(
        "127.0.0.1",
        port,
        path,
        body,
        headers if headers is not None else {"Authorization": f"Bearer {token}"},
        concurrency=concurrency,
        requests=requests,
        max_seconds=120,
    )


async def _wait_recorded(stack: TestStack, expected: int, timeout: float = 120.0) -> int:
    conn = await asyncpg.connect(stack.database_url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            count: int = await conn.fetchval("select count(*) from trajectories")
            if count >= expected or time.monotonic() > deadline:
                return count
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


def _messages_body(model: str) -> bytes:
    return orjson.dumps({"model": model, "max_tokens": 256, "messages": MESSAGES})


async def _scenarios(
    stack: TestStack, upstream_port: int, anthropic_port: int, quick: bool
) -> tuple[list[Row], str]:
    n1 = 500 if quick else 3000
    n32 = 3000 if quick else 20000
    gw = int(stack.base_url.rsplit(":", 1)[1])
    tok = stack.token
    chat = "/v1/chat/completions"
    sent = 0

    async def through_gateway(body: bytes, c: int, n: int) -> Result:
        nonlocal sent
        result = await _measure(gw, chat, body, tok, c, n)
        sent += n + 50  # + the load generator's warm-up requests
        return result

    rows: list[Row] = []
    direct = await _measure(upstream_port, chat, _body("gpt-4o-mini"), KEY, 1, n1)
    rows.append(Row("direct to fake upstream, c=1", direct))
    via = await through_gateway(_body("openai/gpt-4o-mini"), 1, n1)
    rows.append(Row("gateway → fake upstream, c=1", via, direct))
    mock = await through_gateway(_body("mock/bench"), 1, n1)
    rows.append(Row("gateway → mock provider, c=1", mock))

    direct_s = await _measure(upstream_port, chat, _body("gpt-4o-mini", True), KEY, 1, n1)
    rows.append(Row("direct stream, time to first chunk, c=1", direct_s, ttft=True))
    via_s = await through_gateway(_body("openai/gpt-4o-mini", True), 1, n1)
    rows.append(Row("gateway stream, time to first chunk, c=1", via_s, direct_s, ttft=True))

    # Translation: an Anthropic upstream behind /v1/chat/completions, and an
    # OpenAI upstream behind /v1/messages, each against its own direct call.
    anthropic_headers = {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"}
    direct_a = await _measure(
        anthropic_port, "/v1/messages", _messages_body("claude-sonnet-4-5"), "", 1, n1,
        anthropic_headers,
    )  # fmt: skip
    rows.append(Row("direct to fake Anthropic, c=1", direct_a))
    via_a = await through_gateway(_body("claude-sonnet-4-5"), 1, n1)
    rows.append(Row("chat completions → Anthropic (translated), c=1", via_a, direct_a))
    via_m = await _measure(
        gw, "/v1/messages", _messages_body("openai/gpt-4o-mini"), tok, 1, n1,
        {"x-api-key": tok, "anthropic-version": "2023-06-01"},
    )  # fmt: skip
    sent += n1 + 50
    rows.append(Row("/v1/messages → OpenAI upstream (translated), c=1", via_m, direct))

    direct32 = await _measure(upstream_port, chat, _body("gpt-4o-mini"), KEY, 32, n32)
    rows.append(Row("direct to fake upstream, c=32", direct32))
    via32 = await through_gateway(_body("openai/gpt-4o-mini"), 32, n32)
    rows.append(Row("gateway → fake upstream, c=32", via32, direct32))
    mock32 = await through_gateway(_body("mock/bench"), 32, n32)
    rows.append(Row("gateway → mock provider, c=32", mock32))

    failed = sum(r.result.errors for r in rows)
    recorded = await _wait_recorded(stack, sent)
    note = (
        f"{sent:,} calls through the gateway (including warm-ups), {recorded:,} trajectories "
        f"in PostgreSQL after the run, {failed} failed calls."
    )
    return rows, note


def _table(rows: list[Row]) -> str:
    head = ["scenario", "calls", "p50 ms", "p99 ms", "added p50 / p99 ms", "req/s", "errors"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def _write_doc(section: str) -> None:
    text = DOC.read_text() if DOC.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    before, rest = text.split(BEGIN, 1)
    after = rest.split(END, 1)[1]
    DOC.write_text(f"{before}{BEGIN}\n{section}\n{END}{after}")


def _wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure what the gateway adds.")
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--no-write", action="store_true", help="do not update docs")
    parser.add_argument(
        "--hot-only", action="store_true", help="only the hot-path section (bench/hotpath.py)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy flame graphs of gateway, proxy and recorder under c=32 "
        "(bench/results/profiles/)",
    )
    args = parser.parse_args()

    # The hot path first, on its own stack with the servers pinned to one core
    # (bench/hotpath.py); it gives this process all its cores back afterwards.
    hot = hotpath.section(
        quick=args.quick,
        profile=args.profile,
        command="make bench" + (f' BENCH_ARGS="{" ".join(sys.argv[1:])}"' if sys.argv[1:] else ""),
    )
    print(hot, flush=True)
    if not args.no_write:
        hotpath.write_doc(hot)
    if args.hot_only:
        return

    root = traversable_tmpdir("jetty-bench-")
    pg = EmbeddedPostgres(root / "pg", durable=True).start()
    upstream_port, anthropic_port = procs.free_port(), procs.free_port()
    fakes = [
        subprocess.Popen(
            [sys.executable, "-m", f"tests.fakes.{module}", "--port", str(port), "--api-key", key],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for module, port, key in (
            ("openai_upstream", upstream_port, KEY),
            ("anthropic_upstream", anthropic_port, ANTHROPIC_KEY),
        )
    ]
    factory = StackFactory(root / "stacks", lambda: pg)
    try:
        _wait_port(upstream_port)
        _wait_port(anthropic_port)
        stack = factory(
            env={
                "OPENAI_API_KEY": KEY,
                "OPENAI_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1",
                "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
                "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{anthropic_port}",
                "JETTY_LOG_LEVEL": "WARNING",
            }
        )
        rows, note = asyncio.run(_scenarios(stack, upstream_port, anthropic_port, args.quick))
        runbooks = runbook.run_all(
            factory, n=3 if args.quick else 8, sandbox_runs=10 if args.quick else 30
        )
        console_rows = int(os.environ.get("JETTY_BENCH_CONSOLE_ROWS", "1000000"))
        console_section = console.section(factory, 100_000 if args.quick else console_rows)
        soaked = soak.run_soak(factory)
    finally:
        factory.close_all()
        for fake in fakes:
            fake.terminate()
            fake.wait(10)
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)

    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    micro = "\n".join(f"| {what} | {us:.0f} µs |" for what, us in translation.measure())
    section = (
        f"Run {stamp} on {_machine()}; `make bench`{' --quick' if args.quick else ''}.\n\n"
        f"{_table(rows)}\n\n{note}\n\n"
        "Translation alone, in process (request and answer, best of three):\n\n"
        f"| translation | per call |\n|---|---|\n{micro}\n\n"
        "Runbooks (claude-code, the scripted read-summarise-write conversation; the "
        "overhead is the platform run minus the same run bare, i.e. total time minus "
        "the agent's and the fake upstream's):\n\n"
        f"{runbooks}\n\n"
        "The soak (`bench/soak.py`): 20 claude-code runbooks, 4 at a time; the hostile "
        "one floods its gateway socket, then goes past its memory (1024 MB) and disk "
        "(512 MB) limits from its Bash tool:\n\n"
        f"{soaked}\n"
    )
    print(section)
    print(console_section)
    if not args.no_write:
        _write_doc(section)
        console.write_doc(console_section)
    # Keys, limits and metrics on the hot path; the retention sweeper's rate.
    governance.main(write=not args.no_write)


if __name__ == "__main__":
    main()
