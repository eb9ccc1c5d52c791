"""``python -m jetty_cli.localkube up|down|status|build|platform|platform-down``
(see ``make k8s-up``, ``make k8s-platform``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jetty_cli.localkube.cluster import REPO, ClusterError, LocalCluster, build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jetty_cli.localkube")
    parser.add_argument(
        "command", choices=["up", "down", "status", "build", "platform", "platform-down"]
    )
    parser.add_argument("--state", type=Path, default=REPO / ".jetty" / "k8s")
    parser.add_argument(
        "--image", type=Path, action="append", default=[], help="docker-archive to import"
    )
    args = parser.parse_args(argv)
    cluster = LocalCluster(args.state)
    if args.command == "build":
        build()
        return 0
    if args.command == "up":
        # By default, the images `make images` built (.jetty/images/*.env).
        images = args.image or [
            Path(line.split("=", 1)[1])
            for env in sorted((REPO / ".jetty" / "images").glob("*.env"))
            for line in env.read_text().split()
            if line.startswith("ARCHIVE=")
        ]
        try:
            secs = cluster.up(images)
        except ClusterError as exc:
            print(f"k8s: {exc}", file=sys.stderr)
            return 1
        print(f"k8s: ready in {secs:.1f}s at {cluster.api_server}")
        print(f"k8s: export KUBECONFIG={cluster.kubeconfig}")
        return 0
    if args.command in ("platform", "platform-down"):
        return _platform(cluster, args.command == "platform")
    if args.command == "down":
        left = cluster.down()
        for line in left:
            print(
                f"k8s: still different from before the start: {line}", file=sys.stderr, flush=True
            )
        print("k8s: stopped" + ("" if not left else " (see above)"), flush=True)
        return 1 if left else 0
    print(f"k8s: {'running at ' + cluster.api_server if cluster.running() else 'not running'}")
    return 0


def _platform(cluster: LocalCluster, start: bool) -> int:
    """The platform inside the running cluster (deploy/k8s/overlays/local)."""
    from jetty_cli.localkube import platform

    if not cluster.running():
        print("k8s: the cluster is not running (make k8s-up)", file=sys.stderr)
        return 1
    try:
        if not start:
            platform.down(cluster)
            print("k8s: platform removed", flush=True)
            return 0
        token, secs = platform.up(cluster)
    except platform.PlatformError as exc:
        print(f"k8s: {exc}", file=sys.stderr)
        return 1
    print(f"k8s: platform Ready in {secs:.1f}s (from apply to every pod Ready)")
    print(f"k8s: gateway {platform.GATEWAY_URL}  token {token}")
    print(f"k8s: kubectl --kubeconfig {cluster.kubeconfig} -n jetty get pods")
    return 0


if __name__ == "__main__":
    sys.exit(main())
