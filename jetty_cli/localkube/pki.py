"""Certificates (openssl), static tokens and kubeconfigs for the local cluster.

One CA signs the API server's and the kubelet's serving certificates and the
API server's client certificate for the kubelet. Every other identity is a
static bearer token (``tokens.csv``): admin (``system:masters``), the
controller manager, the scheduler and the kubelet (``system:node:localhost``).
"""

from __future__ import annotations

import json
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]

NODE_NAME = "localhost"  # the kubelet refuses a loopback IP; the node is named instead

_IDENTITIES = {
    # name: (user, groups)
    "admin": ("jetty-admin", "system:masters"),
    "controller-manager": ("system:kube-controller-manager", ""),
    "scheduler": ("system:kube-scheduler", ""),
    "kubelet": (f"system:node:{NODE_NAME}", "system:nodes"),
}


@dataclass(frozen=True, slots=True)
class Pki:
    root: Path

    def path(self, name: str) -> Path:
        return self.root / name

    def kubeconfig(self, identity: str) -> Path:
        return self.root / f"{identity}.kubeconfig"

    def token(self, identity: str) -> str:
        for line in self.path("tokens.csv").read_text().splitlines():
            token, user, *_ = line.split(",")
            if user == _IDENTITIES[identity][0]:
                return token
        raise KeyError(identity)


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _issue(root: Path, name: str, cn: str, org: str, sans: str, usage: str) -> None:
    key, csr, crt = (root / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
    subj = f"/CN={cn}" + (f"/O={org}" if org else "")
    _openssl("req", "-new", "-nodes", *_EC, "-keyout", str(key), "-out", str(csr), "-subj", subj)
    ext = root / f"{name}.ext"
    lines = [f"extendedKeyUsage={usage}", "keyUsage=critical,digitalSignature,keyEncipherment"]
    if sans:
        lines.append(f"subjectAltName={sans}")
    ext.write_text("\n".join(lines) + "\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(root / "ca.crt"), "-CAkey",
             str(root / "ca.key"), "-CAcreateserial", "-days", "3650", "-out", str(crt),
             "-extfile", str(ext))  # fmt: skip
    csr.unlink()
    ext.unlink()


def write_kubeconfig(path: Path, server: str, ca: Path, token: str, user: str) -> None:
    """A kubeconfig (JSON is YAML) with one cluster, one user, one context."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "jetty-local", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "jetty-local", "context": {"cluster": "jetty-local", "user": user}}],
        "current-context": "jetty-local",
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)


def ensure_pki(root: Path, api_server: str) -> Pki:
    """Create the CA, certificates, tokens and kubeconfigs once; later calls only
    rewrite the kubeconfigs (the API server's port may change between starts)."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    if not (root / "ca.crt").exists():
        ca_key, ca_crt = str(root / "ca.key"), str(root / "ca.crt")
        _openssl("req", "-x509", "-nodes", *_EC, "-keyout", ca_key, "-out", ca_crt,
                 "-days", "3650", "-subj", "/CN=jetty-local-ca")  # fmt: skip
        sans = "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default.svc,IP:127.0.0.1,IP:10.0.0.1"
        _issue(root, "apiserver", "kube-apiserver", "", sans, "serverAuth")
        _issue(root, "kubelet", NODE_NAME, "", "DNS:localhost,IP:127.0.0.1", "serverAuth")
        _issue(
            root,
            "kubelet-client",
            "kube-apiserver-kubelet-client",
            "system:masters",
            "",
            "clientAuth",
        )
        sa_key = str(root / "sa.key")
        _openssl("ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", sa_key)
        _openssl("ec", "-in", str(root / "sa.key"), "-pubout", "-out", str(root / "sa.pub"))
        rows = []
        for i, (user, groups) in enumerate(_IDENTITIES.values()):
            rows.append(
                f'{secrets.token_hex(24)},{user},uid-{i},"{groups}"'
                if groups
                else f"{secrets.token_hex(24)},{user},uid-{i}"
            )
        (root / "tokens.csv").write_text("\n".join(rows) + "\n")
        (root / "tokens.csv").chmod(0o600)
    pki = Pki(root)
    for identity, (user, _) in _IDENTITIES.items():
        write_kubeconfig(
            pki.kubeconfig(identity), api_server, root / "ca.crt", pki.token(identity), user
        )
    return pki
