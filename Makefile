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

.PHONY: up test lint bench install clean

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

install: $(STAMP) $(AGENTS_STAMP) $(DOCS_STAMP)

up: $(STAMP) $(AGENTS_STAMP) $(DOCS_STAMP)
	$(BIN)/jetty up

test: $(STAMP) $(AGENTS_STAMP) $(DOCS_STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check shared services jetty_cli tests bench examples
	$(BIN)/ruff format --check shared services jetty_cli tests bench examples
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .jetty .pytest_cache .mypy_cache .ruff_cache agents/node_modules
