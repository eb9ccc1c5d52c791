#!/bin/bash
# Installs the Debian packages the local cluster and the image builds need.
# Idempotent; serialised with other apt users through a lock file.
set -euo pipefail
PKGS="golang-go containernetworking-plugins openssl etcd-server containerd runc iptables dpkg-dev mmdebstrap buildah skopeo"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
export DEBIAN_FRONTEND=noninteractive
LOCK=/tmp/jetty-apt.lock
if ! flock "$LOCK" apt-get install -y --no-install-recommends $missing; then
  flock "$LOCK" apt-get update
  flock "$LOCK" apt-get install -y --no-install-recommends $missing
fi
# containerd's package starts nothing without systemd, but stop a daemon the
# package scripts may have launched so the cluster owns the only one it uses.
