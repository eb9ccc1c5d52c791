"""``python -m bench.hotpath``: the hot path against the direct call, in one run.

Starts PostgreSQL (fsync on), the fake OpenAI upstream and a stack (NATS, the
services), pins every server process to the last core and this load generator
and the fake upstream to the others (on a machine with two or more cores), and
measures, each time against the same request sent straight to the fake upstream:

* **c=1**: added p50 / p99, non-streaming, and added time to the first chunk of
  a stream;
* **c=32 closed loop**: requests/s, every call recorded (the run waits until each
  call it made is a trajectory in PostgreSQL and counts them), and over that
  phase the CPU every server process spent per recorded call (gateway, proxy,
  recorder, runner, webhooks, NATS, PostgreSQL = postmaster and all its
  children) and each one's resident memory;
* **open loop** (:func:`bench.loadgen.run_open`, constant rate, latency from
  each request's scheduled send): at ½ and ⅘ of the closed-loop rate and at
  2,000 req/s, p50 / p99 / p99.9 and the rate achieved;
* **the recorder** at 3,000 events/s (:func:`bench.recorder.measure`): its lag
  from publish to row visible;

and sets the figures beside issue 13's targets. ``--profile`` then runs the c=32
load once more with py-spy attached (non-blocking sampling) to the gateway, proxy
and recorder and writes their flame graphs to ``bench/results/profiles/``.
``--quick`` shortens every phase (a check that it works, not a measurement).
``make bench`` runs this as one section; ``make bench BENCH_ARGS=--hot-only``
runs only this.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import orjson
import psutil

from bench import recorder as recorder_bench
from bench.loadgen import OpenResult, Result, run, run_open
from jetty_cli import procs
from jetty_cli.embedded import EmbeddedPostgres
from jetty_cli.stack import service_of
from jetty_cli.testing import StackFactory, TestStack, traversable_tmpdir

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench:hotpath:begin -->", "<!-- bench:hotpath:end -->"
PROFILES = ROOT / "bench" / "results" / "profiles"
KEY = "sk-bench-upstream"
CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Summarise the plot of Hamlet in one sentence."}]
PROFILED = ("gateway", "proxy", "recorder")
#: the closed-loop warm-up before each measured phase through the gateway
WARMUP = 200


def body(model: str, stream: bool = False) -> bytes:
    return orjson.dumps({"model": model, "messages": MESSAGES, "stream": stream})


@dataclass(frozen=True)
class Plan:
    """How long each phase runs."""

    c1_calls: int = 2000
    c32_calls: int = 10000
    open_seconds: float = 10.0
    open_fixed_rate: float = 2000.0
    recorder_rate: float = 3000.0
    recorder_seconds: float = 20.0
    profile_seconds: float = 15.0

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            c1_calls=300,
            c32_calls=2000,
            open_seconds=2.0,
            recorder_seconds=3.0,
            profile_seconds=3.0,
        )


# --- processes: CPU and memory ---------------------------------------------------


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


class CpuWindow:
    """CPU every tracked process spent between :meth:`start` and :meth:`stop`."""

    def __init__(self, procs_: list[Tracked]) -> None:
        self.procs = procs_
        self.before: dict[str, dict[int, float]] = {}
        self.spent: dict[str, float] = {}
        self.rss: dict[str, float] = {}

    def start(self) -> None:
        self.before = {t.name: cpu_seconds(t.members()) for t in self.procs}

    def stop(self) -> None:
        for t in self.procs:
            members = t.members()
            after = cpu_seconds(members)
            # A process that started meanwhile (a new PostgreSQL backend) counts whole.
            before = self.before[t.name]
            self.spent[t.name] = sum(v - before.get(pid, 0.0) for pid, v in after.items())
            self.rss[t.name] = rss_mb(members)


# --- the measured phases --------------------------------------------------------------


async def count_recorded(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        count: int = await conn.fetchval("select count(*) from trajectories")
        return count
    finally:
        await conn.close()


async def wait_recorded(dsn: str, expected: int, timeout: float = 180.0) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        while True:
            count: int = await conn.fetchval("select count(*) from trajectories")
            if count >= expected or time.monotonic() > deadline:
                return count
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


@dataclass
class OpenRow:
    label: str
    via: OpenResult
    direct: OpenResult


@dataclass
class HotResult:
    pinned: str
    plan: Plan
    direct1: Result
    via1: Result
    direct_s: Result
    via_s: Result
    direct32: Result
    via32: Result
    #: c=32 phase: calls made through the gateway, and of those trajectories in PostgreSQL
    calls32: int
    recorded32: int
    cpu_ms: dict[str, float]  #: per recorded call of the c=32 phase
    rss: dict[str, float]
    open_rows: list[OpenRow]
    recorder: recorder_bench.RecorderResult
    #: every call through the gateway in the run, and the trajectories after it
    calls_total: int = 0
    recorded_total: int = 0
    profiles: list[Path] = field(default_factory=list)


class Bench:
    def __init__(self, stack: TestStack, pg: EmbeddedPostgres, upstream_port: int) -> None:
        self.stack = stack
        self.pg = pg
        self.gw = int(stack.base_url.rsplit(":", 1)[1])
        self.upstream = upstream_port
        self.headers = {"Authorization": f"Bearer {stack.token}"}
        self.direct_headers = {"Authorization": f"Bearer {KEY}"}
        self.sent = 0  # calls made through the gateway (each should be a trajectory)

    def _count(self, result: Result | OpenResult) -> None:
        self.sent += len(result.latencies) + result.errors

    async def via(self, payload: bytes, concurrency: int, calls: int) -> Result:
        result = await run(
            "127.0.0.1",
            self.gw,
            CHAT,
            payload,
            self.headers,
            concurrency=concurrency,
            requests=calls,
            max_seconds=300,
            warmup=0,
        )
        self._count(result)
        return result

    async def direct(self, payload: bytes, concurrency: int, calls: int) -> Result:
        return await run(
            "127.0.0.1",
            self.upstream,
            CHAT,
            payload,
            self.direct_headers,
            concurrency=concurrency,
            requests=calls,
            max_seconds=300,
            warmup=50,
        )

    async def settle(self) -> int:
        """Wait until every call made so far is a trajectory: phases do not overlap."""
        return await wait_recorded(self.stack.database_url, self.sent)

    async def warm(self, payload: bytes, concurrency: int) -> None:
        await self.via(payload, concurrency, WARMUP)
        await self.settle()

    async def open_pair(self, label: str, rate: float, seconds: float) -> OpenRow:
        direct = await run_open(
            "127.0.0.1",
            self.upstream,
            CHAT,
            body("gpt-4o-mini"),
            self.direct_headers,
            rate=rate,
            duration=seconds,
        )
        via = await run_open(
            "127.0.0.1",
            self.gw,
            CHAT,
            body("openai/gpt-4o-mini"),
            self.headers,
            rate=rate,
            duration=seconds,
            drain_timeout=60,
        )
        self._count(via)
        await self.settle()
        return OpenRow(label, via, direct)


async def measure_all(
    stack: TestStack, pg: EmbeddedPostgres, upstream_port: int, plan: Plan, pinned: str
) -> HotResult:
    b = Bench(stack, pg, upstream_port)
    plain, streamed = body("openai/gpt-4o-mini"), body("openai/gpt-4o-mini", True)
    b.sent = await count_recorded(stack.database_url)

    # c=1, non-streaming and streaming (time to the first chunk).
    await b.warm(plain, 1)
    direct1 = await b.direct(body("gpt-4o-mini"), 1, plan.c1_calls)
    via1 = await b.via(plain, 1, plan.c1_calls)
    await b.warm(streamed, 1)
    direct_s = await b.direct(body("gpt-4o-mini", True), 1, plan.c1_calls)
    via_s = await b.via(streamed, 1, plan.c1_calls)

    # c=32 closed loop: throughput, every call recorded, CPU per recorded call.
    direct32 = await b.direct(body("gpt-4o-mini"), 32, plan.c32_calls)
    await b.warm(plain, 32)
    window = CpuWindow(tracked(stack, pg))
    before = b.sent
    window.start()
    via32 = await b.via(plain, 32, plan.c32_calls)
    calls32 = b.sent - before
    recorded32 = await b.settle() - before
    window.stop()
    per_call = 1000 / max(1, recorded32)
    cpu_ms = {name: s * per_call for name, s in window.spent.items()}

    # Open loop: below and near the closed-loop rate, and the target's 2,000 req/s.
    closed = via32.rps
    open_rows = [
        await b.open_pair(
            f"½ of closed loop ({closed / 2:,.0f} req/s)", closed / 2, plan.open_seconds
        ),
        await b.open_pair(
            f"⅘ of closed loop ({closed * 0.8:,.0f} req/s)", closed * 0.8, plan.open_seconds
        ),
        await b.open_pair(
            f"{plan.open_fixed_rate:,.0f} req/s", plan.open_fixed_rate, plan.open_seconds
        ),
    ]
    calls_total, recorded_total = b.sent, await b.settle()

    # The recorder alone at a constant event rate (its own collection's rows).
    rec_procs = [t for t in tracked(stack, pg) if t.name in ("recorder", "postgresql")]
    rec_window = CpuWindow(rec_procs)
    rec_window.start()
    rec = await recorder_bench.measure(
        stack.nats.url,
        stack.database_url,
        rate=plan.recorder_rate,
        seconds=plan.recorder_seconds,
    )
    rec_window.stop()
    per_event = 1000 / max(1, rec.recorded)
    rec.recorder_cpu_ms_per_event = rec_window.spent.get("recorder", 0.0) * per_event
    rec.postgresql_cpu_ms_per_event = rec_window.spent.get("postgresql", 0.0) * per_event

    return HotResult(
        pinned=pinned,
        plan=plan,
        direct1=direct1,
        via1=via1,
        direct_s=direct_s,
        via_s=via_s,
        direct32=direct32,
        via32=via32,
        calls32=calls32,
        recorded32=recorded32,
        cpu_ms=cpu_ms,
        rss=window.rss,
        open_rows=open_rows,
        recorder=rec,
        calls_total=calls_total,
        recorded_total=recorded_total,
    )


# --- profiles ---------------------------------------------------------------------------


def record_profiles(stack: TestStack, gw_port: int, seconds: float) -> list[Path]:
    """The c=32 load again for ``seconds`` with py-spy sampling the gateway, proxy and
    recorder processes (every worker): one flame graph SVG each. py-spy needs ptrace
    (root, or CAP_SYS_PTRACE); it samples without pausing the process."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    PROFILES.mkdir(parents=True, exist_ok=True)
    targets = [s for s in stack if s.pid is not None and s.alive and service_of(s.name) in PROFILED]
    spies: list[tuple[Path, subprocess.Popen[bytes]]] = []
    # Each process twice: a flame graph to look at, and collapsed stacks (``.txt``,
    # one line per stack with its sample count) to add up with ``bench.profiles``.
    for s in targets:
        for fmt, suffix in (("flamegraph", "svg"), ("raw", "txt")):
            out = PROFILES / f"{s.name}.{suffix}"
            cmd = [
                spy,
                "record",
                "--pid",
                str(s.pid),
                "--duration",
                str(math.ceil(seconds)),
                "--rate",
                "250",
                "--nonblocking",
                "--format",
                fmt,
                "--output",
                str(out),
            ]
            spies.append(
                (out, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            )
    headers = {"Authorization": f"Bearer {stack.token}"}
    calls = 1_000_000  # ended by the time limit
    asyncio.run(
        run(
            "127.0.0.1",
            gw_port,
            CHAT,
            body("openai/gpt-4o-mini"),
            headers,
            concurrency=32,
            requests=calls,
            max_seconds=seconds + 2,
            warmup=0,
        )
    )
    written: list[Path] = []
    for out, proc in spies:
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if proc.returncode == 0 and out.exists():
            written.append(out)
        else:
            print(f"py-spy for {out.stem} failed: {err.decode(errors='replace')[-300:]}")
    return written


# --- the report -------------------------------------------------------------------------


def _added(via: float, direct: float) -> str:
    return f"+{via - direct:.2f}"


def _latency_table(h: HotResult) -> str:
    lines = [
        "| c=1 | direct p50 / p99 ms | through the gateway p50 / p99 ms | "
        "added p50 / p99 ms | calls | errors |",
        "|---|---|---|---|---|---|",
    ]
    for label, d, v, ttft in (
        ("non-streaming", h.direct1, h.via1, False),
        ("streaming, time to first chunk", h.direct_s, h.via_s, True),
    ):
        dv, vv = (d.ttfb, v.ttfb) if ttft else (None, None)
        d50, d99, v50, v99 = d.pct(50, dv), d.pct(99, dv), v.pct(50, vv), v.pct(99, vv)
        lines.append(
            f"| {label} | {d50:.2f} / {d99:.2f} | {v50:.2f} / {v99:.2f} | "
            f"{_added(v50, d50)} / {_added(v99, d99)} | {len(v.latencies)} | {v.errors} |"
        )
    return "\n".join(lines)


def _throughput_table(h: HotResult) -> str:
    d32, v32 = h.direct32, h.via32
    lines = [
        "| load | direct req/s | direct p50 / p99 ms | gateway req/s | "
        "gateway p50 / p99 / p99.9 ms | errors | sent late (> 1 ms) |",
        "|---|---|---|---|---|---|---|",
        f"| closed loop, c=32 | {d32.rps:,.0f} | {d32.pct(50):.2f} / {d32.pct(99):.2f} | "
        f"{v32.rps:,.0f} | {v32.pct(50):.2f} / {v32.pct(99):.2f} / {v32.pct(99.9):.2f} | "
        f"{v32.errors} | — |",
    ]
    for row in h.open_rows:
        v, d = row.via, row.direct
        lines.append(
            f"| open loop, {row.label} | {d.achieved:,.0f} | {d.pct(50):.2f} / {d.pct(99):.2f} | "
            f"{v.achieved:,.0f} | {v.pct(50):.2f} / {v.pct(99):.2f} / {v.pct(99.9):.2f} | "
            f"{v.errors + v.unsent} | {v.late:,} of {v.scheduled:,} |"
        )
    lines += [
        "",
        "Closed loop: latency from each send. Open loop: req/s is the rate achieved, "
        "latency runs from each request's scheduled send time (a request that waited "
        "for a free connection or a late timer counts its wait).",
    ]
    return "\n".join(lines)


def _cpu_table(h: HotResult) -> str:
    lines = ["| process | CPU ms per recorded call (c=32) | RSS MB |", "|---|---|---|"]
    for name, ms in h.cpu_ms.items():
        lines.append(f"| {name} | {ms:.3f} | {h.rss[name]:.0f} |")
    lines.append(f"| **all** | **{sum(h.cpu_ms.values()):.3f}** | {sum(h.rss.values()):.0f} |")
    return "\n".join(lines)


def targets(h: HotResult) -> list[tuple[str, str, bool]]:
    """Issue 13's targets: (target, measured, met)."""
    out: list[tuple[str, str, bool]] = []
    for label, d, v, ttft in (
        ("c=1 non-streaming", h.direct1, h.via1, False),
        ("c=1 streaming, time to first chunk", h.direct_s, h.via_s, True),
    ):
        dv, vv = (d.ttfb, v.ttfb) if ttft else (None, None)
        a50 = v.pct(50, vv) - d.pct(50, dv)
        a99 = v.pct(99, vv) - d.pct(99, dv)
        out.append((f"added p50 ≤ 1.3 ms, {label}", f"+{a50:.2f} ms", a50 <= 1.3))
        out.append((f"added p99 ≤ 3 ms, {label}", f"+{a99:.2f} ms", a99 <= 3.0))
    all_recorded = h.recorded32 >= h.calls32 and h.recorded_total >= h.calls_total
    out.append(
        (
            "≥ 2,000 req/s at c=32, every call recorded, 0 errors",
            f"{h.via32.rps:,.0f} req/s; {h.recorded32:,} of {h.calls32:,} calls recorded "
            f"({h.recorded_total:,} of {h.calls_total:,} over the run); "
            f"{h.via32.errors} errors",
            h.via32.rps >= 2000 and all_recorded and h.via32.errors == 0,
        )
    )
    total = sum(h.cpu_ms.values())
    out.append(
        (
            "server CPU per recorded call incl. NATS and PostgreSQL ≤ 0.45 ms",
            f"{total:.3f} ms",
            total <= 0.45,
        )
    )
    r = h.recorder
    worst = max(r.lag_ms, default=float("inf"))
    out.append(
        (
            f"recorder keeps up with {r.rate:,.0f} events/s, lag < 1 s",
            f"{r.events_per_s_under_load:,.0f} events/s under load, {r.recorded:,} of "
            f"{r.published:,} recorded; lag p99 {r.pct(99):.0f} ms, max {worst:.0f} ms",
            r.recorded >= r.published
            and worst < 1000
            and r.published / r.publish_seconds >= 0.95 * r.rate,
        )
    )
    return out


def report(h: HotResult, quick: bool, profile: bool, command: str | None = None) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    if command is None:
        flags = (" --quick" if quick else "") + (" --profile" if profile else "")
        command = f"python -m bench.hotpath{flags}"
    r = h.recorder
    target_rows = "\n".join(
        f"| {what} | {measured} | {'met' if ok else 'not met'} |"
        for what, measured, ok in targets(h)
    )
    parts = [
        f"Run {stamp}; `{command}`; {h.pinned}; "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end.",
        _latency_table(h),
        _throughput_table(h),
        f"Per process over the c=32 phase ({h.calls32:,} calls, until the last was in "
        "PostgreSQL; PostgreSQL = postmaster and all its children):",
        _cpu_table(h),
        f"Recorder at a constant rate: {r.report()}.",
        "Against issue 13's targets (computed from the figures above):",
        "| target | measured | |\n|---|---|---|\n" + target_rows,
    ]
    if profile:
        names = ", ".join(f"`{p.relative_to(ROOT)}`" for p in h.profiles) or "none written"
        parts.append(f"Flame graphs under c=32 (py-spy, {h.plan.profile_seconds:.0f} s): {names}.")
    return "\n\n".join(parts)


def write_doc(section: str) -> None:
    """Replace the hot path's section of docs/benchmarks.md (between its markers)."""
    text = DOC.read_text()
    if BEGIN not in text:
        text += f"\n## The hot path\n\n{BEGIN}\n{END}\n"
    before, rest = text.split(BEGIN, 1)
    after = rest.split(END, 1)[1]
    DOC.write_text(f"{before}{BEGIN}\n{section}\n{END}{after}")


# --- the run ------------------------------------------------------------------------------


def _wait_port(port: int, timeout: float = 30.0) -> None:
    procs.wait_until(lambda: _listening(port), timeout=timeout, describe=f"port {port}")


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def section(
    *,
    quick: bool = False,
    profile: bool = False,
    pin_servers: bool = True,
    command: str | None = None,
) -> str:
    """Start everything, measure, stop everything; the markdown section."""
    plan = Plan.quick() if quick else Plan()
    root = traversable_tmpdir("jetty-hotpath-")
    affinity = os.sched_getaffinity(0)
    pg = EmbeddedPostgres(root / "pg", durable=True).start()
    port = procs.free_port()
    fake = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes.openai_upstream",
            "--port",
            str(port),
            "--api-key",
            KEY,
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    factory = StackFactory(root / "stacks", lambda: pg)
    try:
        _wait_port(port)
        stack = factory(
            env={
                "OPENAI_API_KEY": KEY,
                "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1",
                "JETTY_LOG_LEVEL": "WARNING",
            }
        )
        pinned = pin(tracked(stack, pg), fake.pid) if pin_servers else "not pinned"
        print(pinned, flush=True)
        result = asyncio.run(measure_all(stack, pg, port, plan, pinned))
        if profile:
            gw = int(stack.base_url.rsplit(":", 1)[1])
            result.profiles = record_profiles(stack, gw, plan.profile_seconds)
    finally:
        factory.close_all()
        fake.terminate()
        fake.wait(10)
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
        os.sched_setaffinity(0, affinity)
    return report(result, quick, profile, command)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short phases (a smoke run)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy flame graphs of gateway, proxy, recorder under c=32",
    )
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    text = section(quick=args.quick, profile=args.profile, pin_servers=not args.no_pin)
    print(text, flush=True)
    if args.write:
        write_doc(text)


if __name__ == "__main__":
    main()
