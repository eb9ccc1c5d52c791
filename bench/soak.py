"""The soak: 20 claude-code runbooks, 4 at a time, one of them hostile.

The hostile run, from its agent's Bash tool, floods its gateway socket with
connections, allocates past its memory limit (three processes and /dev/shm
together) and fills its disk, one after the other (``jetty.limits``: 1024 MB of
memory, 512 MB of disk). The 19 others each write one file. Reported: how many
of the 19 completed with their file, how the hostile one ended, the wall time,
and how long after the hostile run ended the host was back — its run folder
and cgroup gone, the host's available memory back within 256 MB of what it was
before the soak.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from jetty_cli.testing import StackFactory, traversable_tmpdir
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.scenario_bash import BashScript

KEY = "sk-ant-bench-soak"
CALM_MODEL, HOSTILE_MODEL = "claude-sonnet-4-6", "claude-sonnet-4-5"
RUNS, AT_ONCE = 20, 4
ATTACKS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "attacks"
HOG = "python3 -c 'import time; x = b\"\\1\" * (400 << 20); time.sleep(3)'"


def _hostile_commands() -> list[str]:
    flood = (ATTACKS / "flood.py").read_text()
    return [
        f"python3 - <<'JETTY_PY'\n{flood}\nJETTY_PY",
        f"dd if=/dev/zero of=/dev/shm/f bs=1M count=100; ({HOG}) & ({HOG}) & ({HOG}) & wait",
        "dd if=/dev/zero of=/tmp/fill bs=1M count=600 2>&1 | tail -1",
    ]


@dataclass
class SoakResult:
    calm_completed: int
    calm_with_file: int
    hostile: str
    wall_s: float
    recovery_s: float
    #: host memory available before the soak minus after it (other work on the
    #: machine moves it too)
    memory_delta_mb: float


def _available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _run_cgroups() -> list[Path]:
    """The run cgroups left under this process's memory cgroup (cgroup v1)."""
    own = ""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _id, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            own = path
    parent = Path("/sys/fs/cgroup/memory") / own.lstrip("/") / "jetty-runs"
    return [p for p in parent.iterdir() if p.is_dir()] if parent.is_dir() else []


def _body(task: str, model: str, **jetty: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": "Run the commands."},
            {"role": "user", "content": "Go."},
        ],
        "jetty": {"runbook": True, "agent": "claude-code", "task": task} | jetty,
    }  # fmt: skip


async def soak(factory: StackFactory) -> SoakResult:
    fake = FakeAnthropic(KEY)
    await fake.start()
    runs = traversable_tmpdir("jetty-soak-runs-")
    try:
        stack = await asyncio.to_thread(
            factory,
            env={
                "ANTHROPIC_API_KEY": KEY,
                "ANTHROPIC_BASE_URL": fake.base_url,
                "JETTY_LOG_LEVEL": "WARNING",
                "JETTY_RUNNER_CONCURRENCY": str(AT_ONCE),
                "JETTY_RUNNER_WORKSPACE_ROOT": str(runs / "r"),
            },
        )
        fake.respond_with(CALM_MODEL, BashScript(["mkdir -p out && echo done > out/result.txt"]))
        fake.respond_with(HOSTILE_MODEL, BashScript(_hostile_commands()))
        before = _available_mb()
        headers = {"Authorization": f"Bearer {stack.token}"}
        gate = asyncio.Semaphore(AT_ONCE)
        hostile_ended: list[float] = []
        timeout = aiohttp.ClientTimeout(total=600)

        async def one(i: int, session: aiohttp.ClientSession) -> dict[str, Any]:
            hostile = i == 1
            body = (
                _body("soak-hostile", HOSTILE_MODEL, limits={"memory_mb": 1024, "disk_mb": 512})
                if hostile
                else _body(f"soak-{i}", CALM_MODEL)
            )
            async with gate:
                url = stack.base_url + "/v1/chat/completions"
                async with session.post(url, json=body, headers=headers) as response:
                    doc: dict[str, Any] = await response.json()
            if hostile:
                hostile_ended.append(time.monotonic())
            meta: dict[str, Any] = doc.get("jetty_metadata") or {"status": f"http {doc}"}
            return meta | {"hostile": hostile}

        began = time.monotonic()
        async with aiohttp.ClientSession(timeout=timeout) as session:
            metas = await asyncio.gather(*(one(i, session) for i in range(RUNS)))
        wall = time.monotonic() - began
        [hostile] = [m for m in metas if m["hostile"]]
        calm = [m for m in metas if not m["hostile"]]

        mark = str(hostile.get("trajectory_id"))

        def recovered() -> bool:  # the hostile run's folder, filesystem and cgroup gone
            folders = [p for p in (runs / "r").iterdir() if p.is_dir() and mark in p.name]
            return not folders and not [c for c in _run_cgroups() if mark in c.name]

        while not recovered() and time.monotonic() - hostile_ended[0] < 120:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        recovery = time.monotonic() - hostile_ended[0]
        memory_delta = before - _available_mb()
        error = (hostile.get("error") or {}).get("message", "")
        for m in calm:
            if m["status"] != "completed":
                print("soak: a calm run did not complete:", str(m)[:600])
        return SoakResult(
            calm_completed=sum(m["status"] == "completed" for m in calm),
            calm_with_file=sum(
                any(a["path"] == "out/result.txt" for a in m.get("artifacts", [])) for m in calm
            ),
            hostile=f"{hostile['status']}: {error[:90]}",
            wall_s=wall,
            recovery_s=recovery,
            memory_delta_mb=memory_delta,
        )
    finally:
        await fake.stop()


def table(result: SoakResult) -> str:
    return "\n".join(
        [
            "| soak (20 runbooks, 4 at a time, 1 hostile) | value |",
            "|---|---|",
            f"| calm runs completed | {result.calm_completed} / {RUNS - 1} |",
            f"| calm runs with their artifact | {result.calm_with_file} / {RUNS - 1} |",
            f"| the hostile run | {result.hostile} |",
            f"| wall time | {result.wall_s:.1f} s |",
            "| host clean after the hostile run's answer (its folder, filesystem and"
            f" cgroup gone) | {result.recovery_s:.2f} s |",
            f"| host memory available, before minus after | {result.memory_delta_mb:.0f} MB |",
        ]
    )


def run_soak(factory: StackFactory) -> str:
    return table(asyncio.run(soak(factory)))


if __name__ == "__main__":  # python -m bench.soak: the soak alone
    from jetty_cli.embedded import EmbeddedPostgres

    root = traversable_tmpdir("jetty-soak-")
    pg = EmbeddedPostgres(root / "pg", durable=True).start()
    factory = StackFactory(root / "stacks", lambda: pg)
    try:
        print(run_soak(factory))
    finally:
        factory.close_all()
        pg.stop()
