# defectstream — the two commands a newcomer needs:
#   make demo   set up everything (venv, dependencies, local Kafka + ClickHouse) and run the main job
#   make test   set up everything and run the whole test suite (the stack is left as it was found)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.deps-installed

.PHONY: demo test fault venv browser stack-up stack-down stack-status unit integration bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q --upgrade pip
	$(BIN)/pip install --disable-pip-version-check -q -e '.[test]'
	@touch $@

venv: $(STAMP)

# Debian's chromium for the browser test (Playwright drives /usr/bin/chromium; no browser is downloaded).
browser:
	ops/install-chromium.sh

stack-up: venv
	ops/stack up

stack-down:
	ops/stack down

stack-status:
	ops/stack status

demo: venv
	ops/stack up
	$(BIN)/defectstream demo

# Runs unit + integration tests against the real local stack, without the long fault runs
# (`make fault`). If the stack was not running before, it is stopped again afterwards (data is
# kept under .stack/).
test: venv browser
	@was_up=1; ops/stack status --quiet || was_up=0; \
	ops/stack up || exit 1; \
	$(BIN)/python -m pytest tests -m "not fault"; rc=$$?; \
	if [ $$was_up = 0 ]; then ops/stack down; fi; \
	exit $$rc

# The fault tests of issue 12 (marker `fault`) at full scale: worker SIGKILLs, a ClickHouse outage,
# a broker restart, a lost worker, SIGTERM, each over FAULT_PARTS simulated parts. Numbers go to
# out/fault/*.json. Same stack handling as `make test`.
FAULT_PARTS ?= 1000
fault: venv
	@was_up=1; ops/stack status --quiet || was_up=0; \
	ops/stack up || exit 1; \
	DEFECTSTREAM_FAULT_PARTS=$(FAULT_PARTS) $(BIN)/python -m pytest tests/integration/test_faults.py -m fault -s; rc=$$?; \
	if [ $$was_up = 0 ]; then ops/stack down; fi; \
	exit $$rc

unit: venv
	$(BIN)/python -m pytest tests/unit

integration: venv browser stack-up
	$(BIN)/python -m pytest tests/integration tests/e2e -m "not fault"

bench: venv
	$(BIN)/python ops/bench/codec.py

clean:
	ops/stack down || true
	rm -rf $(VENV) .pytest_cache
