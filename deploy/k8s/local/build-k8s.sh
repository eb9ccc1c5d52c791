#!/bin/bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler and kubelet
# from Debian's `kubernetes` source package, once per version, into a cache
# outside the checkout (shared by every clone on the machine):
#   $JETTY_CACHE/k8s/<version>/bin/
# Nothing here touches the system's apt sources: the source package is fetched
# with a private deb-src list into the cache.
#
# Built with the `providerless` tag (no in-tree cloud providers, so nothing ever
# asks a cloud metadata address) and with the kubelet patched so that it never
# changes a kernel setting (it warns instead; see docs/kubernetes.md).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/env.sh"
mkdir -p "$K8S_CACHE"
exec 9>"$K8S_CACHE/.build.lock"
flock 9   # a second clone building at the same time waits and then reuses
BIN=$K8S_CACHE/bin
COMPONENTS="kube-apiserver kube-controller-manager kube-scheduler kubelet"
# Bump when the recipe below changes: a cache built by an older recipe is rebuilt.
RECIPE=2
done_all=1
for c in $COMPONENTS pause; do [ -x "$BIN/$c" ] || done_all=0; done
if [ $done_all = 1 ] && [ "$(cat "$K8S_CACHE/.built" 2>/dev/null)" = "$RECIPE" ]; then
  echo "k8s: binaries for v$K8S_VERSION cached in $BIN"; exit 0
fi
if [ -f "$K8S_CACHE/.built" ]; then  # an older recipe: rebuild (the Go cache stays)
  rm -f "$K8S_CACHE/.built" "$K8S_CACHE"/gopath/src/k8s.io/kubernetes/pkg/generated/openapi/zz_generated.openapi.go
  for c in $COMPONENTS pause; do rm -f "$BIN/$c"; done
fi
T0=$(date +%s)
SRC=$K8S_CACHE/gopath/src/k8s.io/kubernetes
if [ ! -f "$SRC/.unpacked" ]; then
  A=$K8S_CACHE/apt; mkdir -p "$A/lists/partial" "$A/archives/partial" "$K8S_CACHE/dl"
  echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main" > "$A/src.list"
  APT=(-o Dir::Etc::SourceList="$A/src.list" -o Dir::Etc::SourceParts=/nonexistent
       -o Dir::State::Lists="$A/lists" -o Dir::Cache="$A" -o APT::Sandbox::User=root
       -o Debug::NoLocking=1)
  apt-get "${APT[@]}" update -q
  (cd "$K8S_CACHE/dl" && apt-get "${APT[@]}" source --download-only kubernetes)
  grep -q "^Version: .*$K8S_VERSION" "$K8S_CACHE"/dl/kubernetes_*.dsc || { echo "k8s: Debian source is not $K8S_VERSION" >&2; exit 1; }
  rm -rf "$SRC"; mkdir -p "$(dirname "$SRC")"
  dpkg-source --no-check -x "$K8S_CACHE"/dl/kubernetes_*.dsc "$SRC"
  touch "$SRC/.unpacked"
fi
cd "$SRC"
# The kubelet sets vm.overcommit_memory, kernel.panic, kernel.panic_on_oops and
# kernel.keys.* at start. On a shared machine it must not: make it only warn.
if ! grep -q 'jetty: never change kernel settings' pkg/kubelet/cm/container_manager_linux.go; then
  python3 "$HERE/patch_kubelet.py" pkg/kubelet/cm/container_manager_linux.go
fi
export CGO_ENABLED=0 GO111MODULE=off GOFLAGS= GOCACHE=$K8S_CACHE/gocache GOPATH=$K8S_CACHE/gopath
export HOME=$K8S_CACHE GOPROXY=off
# The source tarball lacks the generated OpenAPI definitions: generate them.
OPENAPI=pkg/generated/openapi/zz_generated.openapi.go
if [ ! -s "$OPENAPI" ]; then
  nice -n 19 go build -p 1 -o "$K8S_CACHE/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
  pkgs=$(grep -Rl --include='*.go' '+k8s:openapi-gen=' vendor/k8s.io pkg 2>/dev/null \
         | xargs -n1 dirname | sort -u | grep -vE '/_|testdata|code-generator|kube-openapi/' \
         | sed 's#^vendor/##; s#^pkg/#k8s.io/kubernetes/pkg/#' | paste -sd, -)
  nice -n 19 "$K8S_CACHE/openapi-gen" --logtostderr -v 1 \
    --go-header-file hack/boilerplate/boilerplate.generatego.txt \
    --input-dirs "$pkgs" --output-package k8s.io/kubernetes/pkg/generated/openapi \
    --output-file-base zz_generated.openapi --report-filename /dev/null
fi
V=v$K8S_VERSION; MAJ=${K8S_VERSION%%.*}; MIN=$(echo "$K8S_VERSION" | cut -d. -f2)
LD="-s -w"
for p in k8s.io/kubernetes/vendor/k8s.io/component-base/version k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
  LD="$LD -X $p.gitVersion=$V -X $p.gitMajor=$MAJ -X $p.gitMinor=$MIN -X $p.gitTreeState=clean"
done
mkdir -p "$BIN"
for c in $COMPONENTS; do
  [ -x "$BIN/$c" ] && continue
  s=$(date +%s)
  nice -n 19 go build -p 1 -tags providerless,selinux,notest -ldflags "$LD" -o "$BIN/$c.tmp" "k8s.io/kubernetes/cmd/$c"
  mv "$BIN/$c.tmp" "$BIN/$c"
  echo "k8s: built $c in $(( $(date +%s) - s )) s"
done
if [ ! -x "$BIN/pause" ]; then
  (cd "$HERE/pause" && GO111MODULE=off go build -ldflags "-s -w" -o "$BIN/pause" pause.go)
fi
echo "$RECIPE" > "$K8S_CACHE/.built"
echo "$(( $(date +%s) - T0 ))" > "$K8S_CACHE/build-seconds"
echo "k8s: v$K8S_VERSION built in $(( $(date +%s) - T0 )) s into $BIN"
