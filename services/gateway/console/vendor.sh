#!/bin/sh
# Refresh the console's vendored JavaScript from npm (`make console-vendor`):
# htmx and its SSE extension, each with its licence, and SHA256SUMS over them.
# The versions are pinned here; change them here and run this again.
set -eu
HTMX=2.0.11
HTMX_SSE=2.2.4
here=$(cd "$(dirname "$0")" && pwd)
dest="$here/static/vendor"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
npm pack --silent "htmx.org@$HTMX" "htmx-ext-sse@$HTMX_SSE" >/dev/null
mkdir htmx sse
tar xzf "htmx.org-$HTMX.tgz" -C htmx
tar xzf "htmx-ext-sse-$HTMX_SSE.tgz" -C sse
mkdir -p "$dest"
cp htmx/package/dist/htmx.min.js "$dest/htmx.min.js"
cp htmx/package/LICENSE "$dest/htmx.LICENSE"
cp sse/package/dist/sse.js "$dest/htmx-ext-sse.js"
cp sse/package/LICENSE "$dest/htmx-ext-sse.LICENSE"
printf 'htmx.org %s\nhtmx-ext-sse %s\n' "$HTMX" "$HTMX_SSE" > "$dest/VERSIONS"
cd "$dest"
sha256sum htmx.min.js htmx.LICENSE htmx-ext-sse.js htmx-ext-sse.LICENSE VERSIONS > SHA256SUMS
cat SHA256SUMS
