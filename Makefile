# Two commands on a fresh machine: `make up` (set up and run) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The agent CLIs the runner starts (pinned in agents/package.json), installed
# from npm into agents/node_modules. Install scripts stay off; the one step that
# matters is claude-code's: it puts its native binary where `.bin/claude` points.
AGENTS_STAMP := agents/node_modules/.installed

.PHONY: up test lint bench install clean images k8s-up k8s-down bench-k8s

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(AGENTS_STAMP): agents/package.json agents/package-lock.json
	npm ci --prefix agents --no-audit --no-fund --ignore-scripts --loglevel=error
	cd agents/node_modules/@anthropic-ai/claude-code && node install.cjs
	touch $(AGENTS_STAMP)

install: $(STAMP) $(AGENTS_STAMP)

up: $(STAMP) $(AGENTS_STAMP)
	$(BIN)/jetty up

test: $(STAMP) $(AGENTS_STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check shared services jetty_cli tests bench
	$(BIN)/ruff format --check shared services jetty_cli tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench.run

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

k8s-down: $(STAMP)
	$(BIN)/python -m jetty_cli.localkube down
