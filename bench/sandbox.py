"""How long a ``local`` sandbox takes to start: from ``start()`` to the agent
process's first stdout line.

Two commands: ``/bin/echo ready`` (the sandbox's own cost: run folder, relay
socket, bwrap, the launcher that starts the inner relay and sets the limits)
and ``node --version`` (what starting the agents' runtime adds). No inputs are
placed and nothing is collected, so the object store is never contacted, and
nothing connects to the gateway. ``python -m bench.sandbox [N]`` prints both.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import sys
import time
from pathlib import Path

from jetty_cli.testing import traversable_tmpdir
from services.runner.agents.base import AgentCommand
from services.runner.sandbox.base import Limits, SandboxSpec
from services.runner.sandbox.local import LocalSandboxBackend, LocalSandboxSettings
from shared.objectstore import ObjectStore
from shared.settings import CommonSettings

ROOT = Path(__file__).resolve().parent.parent
ECHO = ["/bin/echo", "ready"]
NODE = ["/usr/bin/node", "--version"]


async def measure_sandbox_start(n: int, argv: list[str] | None = None) -> list[float]:
    """``n`` sandboxes one after the other; milliseconds from ``start()`` to the
    first line of ``argv`` (default ``/bin/echo ready``)."""
    root = traversable_tmpdir("jetty-bench-sbx-")
    settings = LocalSandboxSettings(
        root=root,
        agents_dir=ROOT / "agents" / "node_modules",
        gateway_host="127.0.0.1",
        gateway_port=9,  # never connected to: the commands make no request
    )
    backend = LocalSandboxBackend(settings, ObjectStore.from_settings(CommonSettings()))
    timings: list[float] = []
    try:
        for i in range(n):
            spec = SandboxSpec(
                trajectory_id=f"bench-{i}",
                collection="bench",
                task="sandbox",
                command=AgentCommand(argv or ECHO, {}),
                inputs=[],
                limits=Limits(timeout_s=30),
                artifact_prefix=f"bench/sandbox/{i}/",
            )
            began = time.perf_counter()
            sandbox = await backend.start(spec)
            try:
                lines = sandbox.lines()
                first = await anext(lines, None)
                elapsed = (time.perf_counter() - began) * 1000
                end = await sandbox.wait()
                if first is None or end.exit_code != 0:
                    raise RuntimeError(f"sandbox did not run {argv or ECHO}: {end}")
                timings.append(elapsed)
            finally:
                await sandbox.destroy()
    finally:
        await backend.close()
        shutil.rmtree(root, ignore_errors=True)
    return timings


async def measure_node_start(n: int) -> list[float]:
    """The same with ``node --version`` as the agent."""
    return await measure_sandbox_start(n, NODE)


def _summary(name: str, timings: list[float]) -> str:
    ordered = sorted(timings)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return (
        f"{name:<28} n={len(ordered):<4} p50={statistics.median(ordered):7.1f} ms"
        f"  p90={p90:7.1f} ms  min={ordered[0]:7.1f} ms"
    )


async def _main(n: int) -> None:
    print(_summary("sandbox start -> echo", await measure_sandbox_start(n)))
    print(_summary("sandbox start -> node", await measure_node_start(n)))


if __name__ == "__main__":
    asyncio.run(_main(int(sys.argv[1]) if len(sys.argv) > 1 else 20))
