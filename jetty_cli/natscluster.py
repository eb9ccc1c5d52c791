"""A NATS JetStream cluster of real ``nats-server`` processes on loopback (tests
and ``make bench``): three nodes by default, routes between all, one store each."""

from __future__ import annotations

import json
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from jetty_cli.embedded import EmbeddedNats
from jetty_cli.procs import free_port


class ClusterNode(EmbeddedNats):
    """One nats-server of a JetStream cluster (all routes on loopback)."""

    def __init__(self, store_dir: Path, name: str, cluster_port: int, routes: list[int]) -> None:
        super().__init__(store_dir, start_timeout=30.0)
        self.node_name = name
        self.cluster_port = cluster_port
        self.routes = routes

    def _argv(self) -> list[str]:
        argv = super()._argv()
        argv[argv.index("-n") + 1] = self.node_name
        routes = ",".join(f"nats://127.0.0.1:{p}" for p in self.routes)
        return [
            *argv,
            "--cluster_name", "jetty",
            "--cluster", f"nats://127.0.0.1:{self.cluster_port}",
            "--routes", routes,
        ]  # fmt: skip

    def _ready(self) -> bool:
        # Ready once the node's JetStream is part of a cluster with a meta leader.
        try:
            with urllib.request.urlopen(self.monitor_url + "/jsz", timeout=0.5) as resp:
                info = json.loads(resp.read())
        except (OSError, ValueError):
            return False
        return bool((info.get("meta_cluster") or {}).get("leader"))

    def kill(self) -> None:
        """SIGKILL: no goodbye to the cluster."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None


@dataclass
class NatsCluster:
    nodes: list[ClusterNode]

    @property
    def url(self) -> str:
        return ",".join(n.url for n in self.nodes)

    @property
    def monitor_url(self) -> str:
        return ",".join(n.monitor_url for n in self.nodes)

    def by_name(self, name: str) -> ClusterNode:
        return next(n for n in self.nodes if n.node_name == name)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_cluster(root: Path, size: int = 3) -> NatsCluster:
    """Start ``size`` nodes together (each is ready only once a meta leader is
    elected, which needs a quorum of them)."""
    ports = [free_port() for _ in range(size)]
    nodes = [ClusterNode(root / f"n{i}" / "store", f"n{i}", ports[i], ports) for i in range(size)]
    errors: list[BaseException] = []

    def start(node: ClusterNode) -> None:
        try:
            node.start()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cluster = NatsCluster(nodes)
    if errors:
        cluster.stop()
        raise errors[0]
    return cluster
