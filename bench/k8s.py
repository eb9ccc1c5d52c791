"""``make bench-k8s``: the Kubernetes tier's numbers, on this machine.

* image sizes (``make images``; the docker-archive each is shipped as);
* the local cluster's start with the binaries cached (containerd, etcd, API
  server, controllers, kubelet, both images imported, node Ready); the first
  build's time is what ``deploy/k8s/local/build-k8s.sh`` recorded;
* a claude-code runbook as a Job against the same run in the local sandbox
  (``stream: false``, same scripted upstream): total time, and request → the
  Job's pod running;
* a NATS JetStream cluster (three nodes, R3) under calls: the stream leader
  SIGKILLed, then the node the gateway is connected to; seconds of 503s and
  accepted calls that never became a trajectory.

Results are printed and written into docs/benchmarks.md between markers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
import urllib.request
from pathlib import Path

import aiohttp
import asyncpg
import nats
import yaml
from kubernetes import client as k8s

from bench.runbook import KEY, _platform
from jetty_cli.embedded import EmbeddedPostgres
from jetty_cli.localkube.cluster import REPO, LocalCluster, bin_dir
from jetty_cli.natscluster import NatsCluster, start_cluster
from jetty_cli.testing import StackFactory, TestStack, traversable_tmpdir
from shared import subjects
from shared.bus import ensure_streams
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.k8s_support import NAMESPACE, apply_docs, build_images, client_for, runner_kubeconfig

DOC = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench-k8s:begin -->", "<!-- bench-k8s:end -->"


def _p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _image_rows() -> list[str]:
    rows = []
    for name in ("jetty", "jetty-sandbox"):
        env = dict(
            line.split("=", 1)
            for line in (REPO / ".jetty" / "images" / f"{name}.env").read_text().split()
        )
        archive = Path(env["ARCHIVE"])
        packages = Path(env["PACKAGES"]).read_text().splitlines()
        rows.append(
            f"| image `{env['IMAGE']}` | {archive.stat().st_size / 1e6:.0f} MB "
            f"(docker-archive, uncompressed; {len(packages)} packages listed) |"
        )
    return rows


class PodWatch:
    """Polls the namespace's pods; remembers when each Job's pod was first Running."""

    def __init__(self, api: k8s.ApiClient) -> None:
        self.core = k8s.CoreV1Api(api)
        self.running: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for pod in self.core.list_namespaced_pod(NAMESPACE, label_selector="job-name").items:
                labels = (pod.metadata.labels if pod.metadata else None) or {}
                job = str(labels.get("job-name"))
                phase = pod.status.phase if pod.status else None
                if phase in ("Running", "Succeeded") and job not in self.running:
                    self.running[job] = time.monotonic()
            time.sleep(0.05)

    def __enter__(self) -> PodWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


async def _runbooks(
    factory: StackFactory, cluster: LocalCluster, images: dict[str, str], n: int
) -> list[str]:
    fake = FakeAnthropic(KEY)
    await fake.start()
    base = {
        "ANTHROPIC_API_KEY": KEY,
        "ANTHROPIC_BASE_URL": fake.base_url,
        "JETTY_LOG_LEVEL": "WARNING",
    }
    try:
        local = await asyncio.to_thread(factory, env=base)
        await _platform(local.base_url, local.token, fake, 1)  # warm the CLI's files
        local_total, local_queued = await _platform(local.base_url, local.token, fake, n)
        local.close()
        api = client_for(cluster.kubeconfig)
        runner = runner_kubeconfig(cluster, api, cluster.state / "runner.kubeconfig")
        kube = await asyncio.to_thread(
            factory,
            env={
                **base,
                "JETTY_RUNNER_BACKEND": "kubernetes",
                "JETTY_K8S_KUBECONFIG": str(runner),
                "JETTY_K8S_NAMESPACE": NAMESPACE,
                "JETTY_K8S_SANDBOX_IMAGE": images["jetty-sandbox"],
                "JETTY_K8S_IMAGE_PULL_POLICY": "Never",
                "JETTY_K8S_HOST_NETWORK": "true",
                "JETTY_K8S_CPU_REQUEST": "100m",
            },
        )
        await _platform(kube.base_url, kube.token, fake, 1)
        to_pod: list[float] = []
        totals: list[float] = []
        with PodWatch(api) as watch:
            for _ in range(n):
                before = set(watch.running)
                began = time.monotonic()
                total, _ = await _platform(kube.base_url, kube.token, fake, 1)
                totals += total
                new = [t for job, t in watch.running.items() if job not in before]
                if new:
                    to_pod.append((min(new) - began) * 1000)
        kube.close()
    finally:
        await fake.stop()
    return [
        f"| claude-code run, local sandbox (`stream: false`) | {n} | {_p50(local_total):.0f} | — |",
        f"| of which request → sandbox started | {n} | {_p50(local_queued):.0f} | — |",
        f"| claude-code run as a Kubernetes Job (`stream: false`) | {n} | {_p50(totals):.0f} | "
        f"+{_p50(totals) - _p50(local_total):.0f} against the local sandbox |",
        f"| of which request → the Job's pod running | {len(to_pod)} | {_p50(to_pod):.0f} | — |",
    ]


async def _failover(factory: StackFactory, root: Path, victim: str) -> str:
    cluster: NatsCluster = await asyncio.to_thread(start_cluster, root / victim.replace(" ", "-"))
    try:
        nc = await nats.connect(cluster.url.split(","))
        await ensure_streams(nc.jetstream(timeout=30), replicas=3)
        stack: TestStack = await asyncio.to_thread(
            factory,
            nats=cluster.nodes[0],
            nats_url=cluster.url,
            nats_monitor_url=cluster.monitor_url,
            env={"JETTY_STREAM_REPLICAS": "3", "JETTY_LOG_LEVEL": "WARNING"},
        )
        accepted: list[str] = []
        refused: list[float] = []
        slowest = 0.0
        stop = asyncio.Event()
        body = {"model": "mock/echo", "messages": [{"role": "user", "content": "hi"}]}
        headers = {"Authorization": f"Bearer {stack.token}"}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

            async def worker() -> None:
                nonlocal slowest
                while not stop.is_set():
                    began = time.monotonic()
                    async with session.post(
                        stack.base_url + "/v1/chat/completions", json=body, headers=headers
                    ) as resp:
                        await resp.read()
                        slowest = max(slowest, time.monotonic() - began)
                        if resp.status == 200:
                            accepted.append(resp.headers["X-Jetty-Trajectory-Id"])
                        else:
                            refused.append(time.monotonic())
                            await asyncio.sleep(0.05)

            workers = [asyncio.create_task(worker()) for _ in range(8)]
            await asyncio.sleep(3)
            if victim == "stream leader":
                info = await nc.jetstream().stream_info(subjects.EVENTS_STREAM)
                node = cluster.by_name(str(info.cluster.leader if info.cluster else ""))
            else:
                node = next(n for n in cluster.nodes if _holds(n.monitor_url, "gateway"))
            killed = time.monotonic()
            await asyncio.to_thread(node.kill)
            await asyncio.sleep(8)
            await asyncio.to_thread(node.start)
            back = len(accepted)
            deadline = time.monotonic() + 90
            while len(accepted) < back + 50 and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            stop.set()
            await asyncio.gather(*workers)
        await nc.close()
        conn = await asyncpg.connect(stack.database_url)
        try:
            deadline = time.monotonic() + 120
            while True:
                found = await conn.fetchval(
                    "select count(*) from trajectories where trajectory_id = any($1::text[])",
                    accepted,
                )
                if found == len(accepted) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
        finally:
            await conn.close()
        stack.close()
        window = (max(refused) - min(refused)) if refused else 0.0
        first = (min(refused) - killed) if refused else 0.0
        return (
            f"| NATS R3, {victim} SIGKILLed (back after 8 s) | {len(accepted)} accepted, "
            f"{len(refused)} answered 503 over {window:.1f} s (first {first:.1f} s after the kill) "
            f"| {len(accepted) - found} lost; slowest answer {slowest:.1f} s |"
        )
    finally:
        cluster.stop()


def _holds(monitor_url: str, name: str) -> bool:
    with urllib.request.urlopen(monitor_url + "/connz", timeout=2) as resp:
        conns = json.loads(resp.read()).get("connections") or []
    return any(str(c.get("name", "")).startswith(name) for c in conns)


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure the Kubernetes tier.")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    root = traversable_tmpdir("jetty-bench-k8s-")
    images, archives = build_images()
    image_tags = {"jetty": images.services, "jetty-sandbox": images.sandbox}
    cluster = LocalCluster(REPO / ".jetty" / "k8s-bench")
    cluster.down()
    started = cluster.up(archives)
    build_file = bin_dir().parent / "build-seconds"
    built = build_file.read_text().strip() if build_file.exists() else "not recorded"
    pg = EmbeddedPostgres(root / "pg", durable=False).start()
    factory = StackFactory(root / "stacks", lambda: pg)
    try:
        api = client_for(cluster.kubeconfig)
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        rbac = REPO / "deploy" / "k8s" / "base" / "rbac.yaml"
        apply_docs(api, [namespace, *[d for d in yaml.safe_load_all(rbac.read_text()) if d]])
        runbook_rows = asyncio.run(_runbooks(factory, cluster, image_tags, args.runs))
        failover = [
            asyncio.run(_failover(factory, root, victim))
            for victim in ("stream leader", "gateway's node")
        ]
    finally:
        factory.close_all()
        pg.stop()
        left = cluster.down()
    lines = [
        "| what | measured |",
        "|---|---|",
        *_image_rows(),
        f"| Kubernetes binaries, first build from Debian's source (nice 19) | {built} s |",
        f"| local cluster start, binaries cached (incl. importing both images) | {started:.1f} s |",
        f"| machine after the cluster stopped | {'as before' if not left else '; '.join(left)} |",
        "",
        "| runbook scenario | runs | p50 ms | overhead |",
        "|---|---|---|---|",
        *runbook_rows,
        "",
        "| failover | calls | lost |",
        "|---|---|---|",
        *failover,
    ]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        text = DOC.read_text()
        if BEGIN in text:
            head, rest = text.split(BEGIN, 1)
            text = head + BEGIN + "\n" + table + "\n" + END + rest.split(END, 1)[1]
        else:
            text += f"\n## Kubernetes tier (`make bench-k8s`)\n\n{BEGIN}\n{table}\n{END}\n"
        DOC.write_text(text)


if __name__ == "__main__":
    main()
