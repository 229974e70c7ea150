# defectstream — the two commands a newcomer needs:
#   make demo   set up everything (venv, dependencies, local Kafka + ClickHouse) and run the main job
#   make test   set up everything and run the whole test suite (the stack is left as it was found)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.deps-installed

.PHONY: demo test venv stack-up stack-down stack-status unit integration bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q --upgrade pip
	$(BIN)/pip install --disable-pip-version-check -q -e '.[test]'
	@touch $@

venv: $(STAMP)

stack-up: venv
	ops/stack up

stack-down:
	ops/stack down

stack-status:
	ops/stack status

demo: venv
	ops/stack up
	$(BIN)/defectstream demo

# Runs unit + integration tests against the real local stack. If the stack was not running
# before, it is stopped again afterwards (data is kept under .stack/).
test: venv
	@was_up=1; ops/stack status --quiet || was_up=0; \
	ops/stack up || exit 1; \
	$(BIN)/python -m pytest tests; rc=$$?; \
	if [ $$was_up = 0 ]; then ops/stack down; fi; \
	exit $$rc

unit: venv
	$(BIN)/python -m pytest tests/unit

integration: venv stack-up
	$(BIN)/python -m pytest tests/integration tests/e2e

bench: venv
	$(BIN)/python ops/bench/codec.py

clean:
	ops/stack down || true
	rm -rf $(VENV) .pytest_cache
