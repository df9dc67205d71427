# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install models run test lint broker clean

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

run: models
	$(BIN)/dagster-platform dev

lint: install
	$(BIN)/ruff check .

test: models lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

broker: install
	$(BIN)/dagster-platform broker start --foreground

clean:
	-$(BIN)/dagster-platform broker stop
	rm -rf .state
