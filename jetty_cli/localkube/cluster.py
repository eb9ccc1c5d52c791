"""Start and stop the local cluster: containerd, etcd, API server, controller
manager, scheduler, kubelet; all on 127.0.0.1, all state under one folder.

The processes outlive the command that starts them (``make k8s-up`` returns);
their pids, ports and the machine's state before the start are kept in the
state folder, so ``down`` (from any process) stops exactly them and puts back
what they changed. ``down`` also removes the pods' processes, mounts and
cgroups, so nothing is left behind even when the kubelet did not clean up.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from jetty_cli.localkube import hoststate
from jetty_cli.localkube.images import PAUSE_IMAGE, write_pause_image
from jetty_cli.localkube.pki import NODE_NAME, Pki, ensure_pki
from jetty_cli.procs import free_port, port_open

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "deploy" / "k8s" / "local"
K8S_VERSION = "1.20.2"
ORDER = (
    "containerd",
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
)
KUBE_NAMESPACE_PREFIXES = ("kubepods",)


# The processes this interpreter started, by pid: kept so that they are not
# garbage collected while they run, and reaped when stopped.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class ClusterError(RuntimeError):
    pass


def cache_dir() -> Path:
    base = os.environ.get("JETTY_CACHE")
    if base:
        return Path(base)
    if os.geteuid() == 0:
        return Path("/var/cache/jetty")
    return Path(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))) / "jetty"


def bin_dir() -> Path:
    return cache_dir() / "k8s" / f"v{K8S_VERSION}" / "bin"


def cannot_run_reason() -> str | None:
    """Why this machine cannot run the cluster tier, or ``None`` if it can."""
    if os.geteuid() != 0:
        return "not root (the kubelet and containerd need root)"
    if not Path("/etc/debian_version").exists():
        return "not Debian (the cluster is built from Debian's packages)"
    if not Path("/sys/fs/cgroup").is_dir():
        return "no cgroup filesystem"
    return None


def build() -> None:
    """Debian packages and the Kubernetes binaries (cached; fast when present)."""
    for script in ("deps.sh", "build-k8s.sh"):
        subprocess.run([str(SCRIPTS / script)], check=True)


@dataclass(frozen=True, slots=True)
class Ports:
    etcd: int
    etcd_peer: int
    apiserver: int
    kubelet: int


class LocalCluster:
    def __init__(self, state: Path) -> None:
        self.state = state.resolve()
        self.run = self.state / "run"
        self.bin = bin_dir()

    # -- paths ------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.state / "pki" / "admin.kubeconfig"

    @property
    def sock(self) -> Path:
        return self.state / "containerd" / "containerd.sock"

    def ports(self) -> Ports:
        return Ports(**json.loads((self.state / "ports.json").read_text()))

    @property
    def api_server(self) -> str:
        return f"https://127.0.0.1:{self.ports().apiserver}"

    def _pid(self, name: str) -> int | None:
        path = self.run / f"{name}.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(path.read_text())
            child = _CHILDREN.get(pid)
            if child is not None:  # ours for sure (and maybe not exec'd yet)
                return pid if child.poll() is None else None
            stat = Path(f"/proc/{pid}/stat").read_text()
            ours = str(self.state).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
            if ours and stat.rsplit(")", 1)[1].split()[0] != "Z":  # not a stale pid file
                return pid
        return None

    def running(self) -> bool:
        return all(self._pid(n) for n in ORDER)

    # -- start ------------------------------------------------------------
    def up(self, images: Sequence[Path] = (), timeout: float = 180.0) -> float:
        """Start everything (or import ``images`` into a running cluster);
        returns the seconds it took."""
        started = time.monotonic()
        if self.running():
            self.import_images(images)
            return time.monotonic() - started
        if any(self._pid(n) for n in ORDER):
            self.down()
        reason = cannot_run_reason()
        if reason:
            raise ClusterError(f"the local cluster cannot run here: {reason}")
        if not (self.bin / "kubelet").exists() or not (self.bin / "pause").exists():
            build()
        self.run.mkdir(parents=True, exist_ok=True)
        before = self.state / "host-before.json"
        before.write_text(json.dumps(hoststate.snapshot(), indent=1))
        ports = self._choose_ports()
        pki = ensure_pki(self.state / "pki", f"https://127.0.0.1:{ports.apiserver}")
        try:
            self._start_containerd()
            self.import_images(
                [write_pause_image(self.bin / "pause", self.state / "pause.tar"), *images]
            )
            self._start_etcd(ports)
            self._wait(lambda: self._etcd_healthy(ports), timeout, "etcd")
            self._start_apiserver(ports, pki)
            self._wait(lambda: self._api_ready(pki), timeout, "the API server to be ready")
            self._start_controllers(pki)
            self._start_kubelet(ports, pki)
            self._wait(self._node_ready, timeout, "the node to be Ready")
            self._wait(self._default_sa, timeout, "the default service account")
        except BaseException:
            self.down()
            raise
        return time.monotonic() - started

    def _choose_ports(self) -> Ports:
        """The previous start's ports while they are free (etcd keeps its peer
        URL in its data); otherwise new ones and a fresh etcd."""
        saved = self.state / "ports.json"
        if saved.exists():
            ports = self.ports()
            if not any(port_open("127.0.0.1", p) for p in asdict(ports).values()):
                return ports
        ports = Ports(free_port(), free_port(), free_port(), free_port())
        shutil.rmtree(self.state / "etcd", ignore_errors=True)
        saved.write_text(json.dumps(asdict(ports)))
        return ports

    def _spawn(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        log = (self.run / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **(env or {})},
            cwd=self.run,
            start_new_session=True,
        )
        log.close()
        _CHILDREN[proc.pid] = proc
        (self.run / f"{name}.pid").write_text(str(proc.pid))

    def _wait(self, ok: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [n for n in ORDER if (self.run / f"{n}.pid").exists() and not self._pid(n)]
            if dead:
                raise ClusterError(
                    f"{dead[0]} exited while waiting for {what}; see {self.run}/{dead[0]}.log"
                )
            with contextlib.suppress(Exception):
                if ok():
                    return
            time.sleep(0.2)
        raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}; logs in {self.run}")

    def _start_containerd(self) -> None:
        c = self.state / "containerd"
        (self.state / "cni").mkdir(parents=True, exist_ok=True)
        # Only hostNetwork pods run here; the runtime still wants one network
        # configured to call itself ready: the loopback plugin, nothing else.
        (self.state / "cni" / "10-loopback.conflist").write_text(
            json.dumps(
                {"cniVersion": "0.4.0", "name": "jetty-lo", "plugins": [{"type": "loopback"}]}
            )
        )
        (c / "opt").mkdir(parents=True, exist_ok=True)
        config = f"""version = 2
root = "{c}/root"
state = "{c}/state"
[grpc]
  address = "{self.sock}"
[ttrpc]
  address = "{c}/ttrpc.sock"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{c}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{self.state}/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{c}/no-registries"
"""
        (c / "config.toml").write_text(config)
        self._spawn("containerd", ["containerd", "--config", str(c / "config.toml")])
        self._wait(lambda: self._ctr("version").returncode == 0, 30, "containerd")

    def _ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "--address", str(self.sock), "-n", "k8s.io", *args],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    def import_images(self, archives: Sequence[Path]) -> None:
        for archive in archives:
            done = self._ctr("images", "import", "--no-unpack", str(archive))
            if done.returncode != 0:
                raise ClusterError(f"ctr import {archive}: {done.stderr.strip()}")

    def _start_etcd(self, p: Ports) -> None:
        client, peer = f"http://127.0.0.1:{p.etcd}", f"http://127.0.0.1:{p.etcd_peer}"
        self._spawn("etcd", [
            "etcd", "--name", "local", "--data-dir", str(self.state / "etcd"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"local={peer}", "--logger", "zap", "--log-level", "warn",
        ])  # fmt: skip

    def _start_apiserver(self, p: Ports, pki: Pki) -> None:
        k = pki.path
        self._spawn("kube-apiserver", [
            str(self.bin / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{p.etcd}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={p.apiserver}", "--insecure-port=0",
            f"--tls-cert-file={k('apiserver.crt')}", f"--tls-private-key-file={k('apiserver.key')}",
            f"--client-ca-file={k('ca.crt')}", f"--token-auth-file={k('tokens.csv')}",
            "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={k('sa.pub')}",
            f"--service-account-signing-key-file={k('sa.key')}",
            "--api-audiences=https://kubernetes.default.svc",
            "--service-cluster-ip-range=10.0.0.0/24", "--allow-privileged=false",
            "--feature-gates=TTLAfterFinished=true", "--profiling=false",
            "--endpoint-reconciler-type=none",
            f"--kubelet-client-certificate={k('kubelet-client.crt')}",
            f"--kubelet-client-key={k('kubelet-client.key')}",
            f"--kubelet-certificate-authority={k('ca.crt')}",
            "--kubelet-preferred-address-types=Hostname",
        ])  # fmt: skip

    def _start_controllers(self, pki: Pki) -> None:
        cm, sched = pki.kubeconfig("controller-manager"), pki.kubeconfig("scheduler")
        self._spawn("kube-controller-manager", [
            str(self.bin / "kube-controller-manager"), f"--kubeconfig={cm}",
            "--leader-elect=false", "--port=0", "--secure-port=0",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki.path('sa.key')}",
            f"--root-ca-file={pki.path('ca.crt')}",
            "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service,-route",
            "--feature-gates=TTLAfterFinished=true", "--profiling=false",
            f"--flex-volume-plugin-dir={self.state / 'kubelet' / 'volume-plugins'}",
        ])  # fmt: skip
        self._spawn("kube-scheduler", [
            str(self.bin / "kube-scheduler"), f"--kubeconfig={sched}",
            "--leader-elect=false", "--port=0", "--secure-port=0", "--profiling=false",
        ])  # fmt: skip

    def _start_kubelet(self, p: Ports, pki: Pki) -> None:
        kubelet_dir = self.state / "kubelet"
        kubelet_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": "127.0.0.1",
            "port": p.kubelet,
            "readOnlyPort": 0,
            "healthzPort": 0,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(pki.path("ca.crt"))},
            },
            "authorization": {"mode": "Webhook"},
            "tlsCertFile": str(pki.path("kubelet.crt")),
            "tlsPrivateKeyFile": str(pki.path("kubelet.key")),
            "cgroupDriver": "cgroupfs",
            "failSwapOn": False,
            "makeIPTablesUtilChains": False,
            "protectKernelDefaults": False,  # the build only warns (patch_kubelet.py)
            "enableDebuggingHandlers": True,  # logs through the API server
            "serializeImagePulls": False,
            "resolvConf": "/etc/resolv.conf",
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "maxPods": 60,
            # Kept inside the state folder: the defaults are under /usr/libexec and
            # /var/lib/kubelet (device plugins' socket folder is fixed: turned off).
            "volumePluginDir": str(kubelet_dir / "volume-plugins"),
            "featureGates": {"DevicePlugins": False},
        }
        (kubelet_dir / "config.json").write_text(json.dumps(config, indent=1))
        self._spawn(
            "kubelet",
            [
                str(self.bin / "kubelet"),
                f"--config={kubelet_dir / 'config.json'}",
                f"--kubeconfig={pki.kubeconfig('kubelet')}",
                f"--hostname-override={NODE_NAME}",
                "--container-runtime=remote",
                f"--container-runtime-endpoint=unix://{self.sock}",
                f"--root-dir={kubelet_dir / 'root'}",
                f"--cert-dir={kubelet_dir / 'pki'}",
                "--v=1",
            ],
            env={"AWS_EC2_METADATA_DISABLED": "true"},
        )

    def _get(self, path: str) -> Any:
        ctx = ssl.create_default_context(cafile=str(self.state / "pki" / "ca.crt"))
        token = Pki(self.state / "pki").token("admin")
        req = urllib.request.Request(
            self.api_server + path, headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
            body = resp.read()
        return json.loads(body) if body.startswith(b"{") else body.decode()

    def _etcd_healthy(self, p: Ports) -> bool:
        url = f"http://127.0.0.1:{p.etcd}/health"
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(json.loads(resp.read()).get("health") == "true")

    def _api_ready(self, _: Pki) -> bool:
        return bool(self._get("/readyz") == "ok")

    def _node_ready(self) -> bool:
        node = self._get(f"/api/v1/nodes/{NODE_NAME}")
        return any(
            c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"]
        )

    def _default_sa(self) -> bool:
        return bool(self._get("/api/v1/namespaces/default/serviceaccounts/default"))

    # -- stop -------------------------------------------------------------
    def down(self) -> list[str]:
        """Stop everything and put the machine back; returns what still differs
        from before the start (empty when all is as it was)."""
        for name in reversed(ORDER[1:]):  # the kubelet first, containerd last
            self._kill(name)
        self._kill_pods()
        self._kill(ORDER[0])
        self._kill_shims()
        self._unmount()
        self._remove_cgroups()
        before_file = self.state / "host-before.json"
        if not before_file.exists():
            return []
        before = json.loads(before_file.read_text())
        self._restore(before)
        diff = hoststate.differences(before, hoststate.snapshot())
        before_file.unlink()
        return diff

    def _kill(self, name: str) -> None:
        pid = self._pid(name)
        if pid is not None:
            # SIGKILL: the API server takes a minute to exit on SIGTERM, and all
            # of the cluster's state is disposable or on disk already.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            child = _CHILDREN.pop(pid, None)
            if child is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(5)
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
        (self.run / f"{name}.pid").unlink(missing_ok=True)

    def _pod_cgroups(self) -> list[Path]:
        found = []
        for controller in hoststate.CGROUP_ROOT.iterdir():
            for prefix in KUBE_NAMESPACE_PREFIXES:
                top = controller / prefix
                if top.is_dir() and not controller.is_symlink():
                    found.append(top)
        return found

    def _kill_pods(self) -> None:
        """SIGKILL every process in the pods' cgroups (only those)."""
        for _ in range(20):
            pids: set[int] = set()
            for top in self._pod_cgroups():
                for procs in top.rglob("cgroup.procs"):
                    with contextlib.suppress(OSError, ValueError):
                        pids |= {int(x) for x in procs.read_text().split()}
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)

    def _kill_shims(self) -> None:
        """The runtime shims this cluster's containerd started (they name our socket)."""
        marker = str(self.state / "containerd").encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if marker in (entry / "cmdline").read_bytes():
                    os.kill(int(entry.name), signal.SIGKILL)

    def _unmount(self) -> None:
        state = str(self.state)
        for _ in range(3):
            points = [
                line.split()[4]
                for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if line.split()[4].startswith(state)
            ]
            if not points:
                return
            for point in sorted(points, key=len, reverse=True):
                subprocess.run(["umount", point], capture_output=True, check=False)
        for point in [
            ln.split()[4] for ln in Path("/proc/self/mountinfo").read_text().splitlines()
        ]:
            if point.startswith(state):
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)

    def _remove_cgroups(self) -> None:
        for top in self._pod_cgroups():
            for d in sorted(
                (p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
            ):
                with contextlib.suppress(OSError):
                    d.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()

    def _restore(self, before: dict[str, Any]) -> None:
        """Put back a kernel setting that changed anyway, and remove kubelet
        log folders that did not exist before."""
        for name, value in before["sysctls"].items():
            path = Path("/proc/sys") / name
            if value != "<absent>" and path.exists() and path.read_text().strip() != value:
                with contextlib.suppress(OSError):
                    path.write_text(value)
        for folder, key in (
            ("/var/log/pods", "var_log_pods"),
            ("/var/log/containers", "var_log_containers"),
        ):
            old = before.get(key)
            if not os.path.isdir(folder):
                continue
            if old is None:
                subprocess.run(["rm", "-rf", folder], check=False)
                continue
            for entry in set(os.listdir(folder)) - set(old):
                subprocess.run(["rm", "-rf", os.path.join(folder, entry)], check=False)
