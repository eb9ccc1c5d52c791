# Two commands on a fresh machine: `make up` (set up and run) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The agent CLIs the runner starts (pinned in agents/package.json), installed
# from npm into agents/node_modules. Install scripts stay off; the one step that
# matters is claude-code's: it puts its native binary where `.bin/claude` points.
AGENTS_STAMP := agents/node_modules/.installed
# The API reference page's assets (Swagger UI, pinned in its package.json), served at /docs.
DOCS_VENDOR := services/gateway/openapi/vendor
DOCS_STAMP := $(DOCS_VENDOR)/node_modules/.installed

# The console's browser tests drive Debian's Chromium through Playwright for Python
# (pinned in pyproject.toml; `playwright install` downloads and cannot be used).
# apt is shared with other installs on the machine: one at a time, behind a lock.
CHROMIUM := /usr/lib/chromium/chromium

# Debian packages the local sandbox needs: libseccomp's Python binding compiles
# its seccomp filter (for the system python3). apt is shared by whoever else
# installs at the same time: the lock serialises us.
SYSDEPS_STAMP := $(VENV)/.sysdeps
SYSDEPS := python3-seccomp

.PHONY: up test lint bench install clean console-vendor images k8s-up k8s-platform k8s-down bench-k8s

$(SYSDEPS_STAMP): | $(STAMP)
	@if ! /usr/bin/python3 -c 'import seccomp' 2>/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    flock /tmp/jetty-apt.lock sh -c 'apt-get install -y -q $(SYSDEPS) || \
	      (apt-get update -q && apt-get install -y -q $(SYSDEPS))'; \
	  else echo "install $(SYSDEPS) (Debian) for the local sandbox's seccomp filter"; exit 1; fi; \
	fi
	touch $(SYSDEPS_STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(AGENTS_STAMP): agents/package.json agents/package-lock.json
	npm ci --prefix agents --no-audit --no-fund --ignore-scripts --loglevel=error
	cd agents/node_modules/@anthropic-ai/claude-code && node install.cjs
	touch $(AGENTS_STAMP)

$(DOCS_STAMP): $(DOCS_VENDOR)/package.json $(DOCS_VENDOR)/package-lock.json
	npm ci --prefix $(DOCS_VENDOR) --no-audit --no-fund --ignore-scripts --loglevel=error
	touch $(DOCS_STAMP)

$(CHROMIUM):
	flock /tmp/jetty-apt.lock sh -c 'export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y --no-install-recommends chromium \
	  || { apt-get update && apt-get install -y --no-install-recommends chromium; }'

install: $(STAMP) $(AGENTS_STAMP) $(SYSDEPS_STAMP) $(DOCS_STAMP)

up: $(STAMP) $(AGENTS_STAMP) $(SYSDEPS_STAMP) $(DOCS_STAMP)
	$(BIN)/jetty up

test: $(STAMP) $(AGENTS_STAMP) $(SYSDEPS_STAMP) $(CHROMIUM) $(DOCS_STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check shared services jetty_cli tests bench examples
	$(BIN)/ruff format --check shared services jetty_cli tests bench examples
	$(BIN)/mypy

# `make bench BENCH_ARGS=--hot-only` (or --quick, --profile, --no-write): see bench/run.py.
bench: $(STAMP) $(AGENTS_STAMP) $(SYSDEPS_STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# Refresh the console's vendored htmx + SSE extension from npm (versions pinned in
# the script; it rewrites static/vendor/SHA256SUMS).
console-vendor:
	sh services/gateway/console/vendor.sh

clean:
	rm -rf $(VENV) .jetty .pytest_cache .mypy_cache .ruff_cache agents/node_modules

# Kubernetes (docs/kubernetes.md): the two images, built here with buildah from
# Debian's packages (no registry pull), and a real local cluster (root, Debian).
images: $(STAMP) $(AGENTS_STAMP)
	deploy/images/build.sh

k8s-up: images
	$(BIN)/python -m jetty_cli.localkube up

bench-k8s: $(STAMP) $(AGENTS_STAMP)
	$(BIN)/python -m bench.k8s

# The platform itself inside the local cluster (deploy/k8s/overlays/local).
k8s-platform: k8s-up
	$(BIN)/python -m jetty_cli.localkube platform

k8s-down: $(STAMP)
	$(BIN)/python -m jetty_cli.localkube down
