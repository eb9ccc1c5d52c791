"""What the platform adds to a runbook: the same claude-code run, once through the
whole platform and once bare.

* **platform**: upload a CSV, ``POST /v1/chat/completions`` with ``jetty.runbook``
  (``stream: false``) and wait for the answer — gateway validation, the work queue,
  the runner, a run-scoped token, the local sandbox, the agent, its model calls
  through gateway and proxy (recorded), artifact upload, the end event.
* **bare**: the adapter's own command run directly on the host (no sandbox, no
  gateway), the CLI talking straight to the fake Anthropic upstream, in a folder
  holding the same CSV.

Both answer the agent's calls with the same scripted conversation (read the CSV,
write a summary, finish), so ``platform - bare`` is the platform's own overhead:
total time minus the agent's and the fake upstream's.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from jetty_cli.testing import StackFactory, traversable_tmpdir
from services.runner.agents.base import AgentSpec
from services.runner.agents.claude_code import ClaudeCodeAdapter
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.scenario_claude_code import ReadSummarizeWrite

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-ant-bench-runbook"
MODEL = "claude-sonnet-4-5"
CSV = b"name,price,qty\napples,3,10\npears,5,4\nplums,2,7\n"
RUNBOOK = "Read uploads/data.csv and write results/summary.md."


@dataclass
class RunbookTimings:
    bare: list[float]
    platform: list[float]
    queued: list[float]  # request -> sandbox started (from jetty_metadata.timing)


def _p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def _bare(fake: FakeAnthropic, n: int) -> list[float]:
    adapter = ClaudeCodeAdapter()
    timings: list[float] = []
    for _ in range(n):
        base = traversable_tmpdir("jetty-bench-bare-")
        workspace, home = base / "workspace", base / "home"
        (workspace / "uploads").mkdir(parents=True)
        home.mkdir()
        (workspace / "uploads" / "data.csv").write_bytes(CSV)
        fake.respond_with(MODEL, ReadSummarizeWrite(str(workspace)))
        command = adapter.command(
            AgentSpec(
                model=MODEL,
                runbook=RUNBOOK,
                prompt="Go.",
                gateway_url=fake.base_url,
                token=KEY,
                workspace=str(workspace),
                home=str(home),
                agents_dir=str(ROOT / "agents"),
            )
        )
        for relative, data in command.home_files.items():
            (home / relative).parent.mkdir(parents=True, exist_ok=True)
            (home / relative).write_bytes(data)
        began = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            *command.argv,
            env=command.env,
            cwd=workspace,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await proc.communicate(command.stdin or b"")
        elapsed = (time.perf_counter() - began) * 1000
        if proc.returncode != 0 or not (workspace / "results" / "summary.md").exists():
            raise RuntimeError(f"bare claude-code run failed (exit {proc.returncode})")
        timings.append(elapsed)
        shutil.rmtree(base, ignore_errors=True)
    return timings


async def _platform(
    base_url: str, token: str, fake: FakeAnthropic, n: int
) -> tuple[list[float], list[float]]:
    fake.respond_with(MODEL, ReadSummarizeWrite("/workspace"))
    headers = {"Authorization": f"Bearer {token}"}
    totals: list[float] = []
    queued: list[float] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        form = aiohttp.FormData()
        form.add_field("file", CSV, filename="data.csv", content_type="text/csv")
        async with session.post(
            base_url + "/api/v1/files/upload", data=form, headers=headers
        ) as response:
            path = (await response.json())["path"]
        body: dict[str, Any] = {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": RUNBOOK},
                {"role": "user", "content": "Go."},
            ],
            "jetty": {"runbook": True, "agent": "claude-code", "file_paths": [path]},
        }
        for _ in range(n):
            began = time.perf_counter()
            async with session.post(
                base_url + "/v1/chat/completions", json=body, headers=headers
            ) as response:
                doc = await response.json()
            elapsed = (time.perf_counter() - began) * 1000
            meta = doc.get("jetty_metadata") or {}
            if meta.get("status") != "completed":
                raise RuntimeError(f"platform run did not complete: {doc}")
            totals.append(elapsed)
            queued.append(meta["timing"]["queued_ms"])
    return totals, queued


async def measure_runbooks(factory: StackFactory, n: int) -> RunbookTimings:
    fake = FakeAnthropic(KEY)
    await fake.start()
    try:
        stack = await asyncio.to_thread(
            factory,
            env={
                "ANTHROPIC_API_KEY": KEY,
                "ANTHROPIC_BASE_URL": fake.base_url,
                "JETTY_LOG_LEVEL": "WARNING",
            },
        )
        # One of each first: the CLI's first start reads its files from disk.
        await _bare(fake, 1)
        await _platform(stack.base_url, stack.token, fake, 1)
        bare = await _bare(fake, n)
        platform, queued = await _platform(stack.base_url, stack.token, fake, n)
    finally:
        await fake.stop()
    return RunbookTimings(bare=bare, platform=platform, queued=queued)


def table(timings: RunbookTimings, sandbox: list[float], node: list[float]) -> str:
    rows: list[tuple[str, int, float, str]] = [
        ("local sandbox start → first line of `/bin/echo`", len(sandbox), _p50(sandbox), ""),
        ("local sandbox start → first line of `node --version`", len(node), _p50(node), ""),
        ("claude-code run, bare (no platform)", len(timings.bare), _p50(timings.bare), ""),
        (
            "claude-code run through the platform (`stream: false`)",
            len(timings.platform),
            _p50(timings.platform),
            f"+{_p50(timings.platform) - _p50(timings.bare):.0f}",
        ),
        ("of which request → sandbox started (queue, claim, token, sandbox)",
         len(timings.queued), _p50(timings.queued), ""),
    ]  # fmt: skip
    lines = ["| runbook scenario | runs | p50 ms | platform overhead ms |", "|---|---|---|---|"]
    lines += [
        f"| {name} | {count} | {p50:.0f} | {extra or '—'} |" for name, count, p50, extra in rows
    ]
    return "\n".join(lines)


def run_all(factory: StackFactory, n: int, sandbox_runs: int) -> str:
    from bench.sandbox import measure_node_start, measure_sandbox_start

    async def go() -> tuple[RunbookTimings, list[float], list[float]]:
        timings = await measure_runbooks(factory, n)
        return (
            timings,
            await measure_sandbox_start(sandbox_runs),
            await measure_node_start(sandbox_runs),
        )

    timings, sandbox, node = asyncio.run(go())
    return table(timings, sandbox, node)
