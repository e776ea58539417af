# Install steps live here and nowhere else; CI runs `make test` on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# Tests wait on sockets and timers far more than on the CPU: four workers on two cores.
TEST_WORKERS ?= 4

.PHONY: install postgres run check test bench bench-load clean

$(BIN)/bridge: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

install: $(BIN)/bridge

run: install
	$(BIN)/bridge serve --dev --host $(HOST) --port $(PORT)

# Style and types, checked by machines: ruff (lint and format) and mypy --strict.
check: install
	$(BIN)/ruff check bridge tests bench
	$(BIN)/ruff format --check bridge tests bench
	$(BIN)/mypy

# PostgreSQL's server binaries, for the suite on the PostgreSQL ledger: Debian's package, installed
# when missing and we may (root with apt-get); else the suite says loudly that it skipped them.
HAVE_POSTGRES = ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1
postgres:
	@$(HAVE_POSTGRES) || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } || true

# The suite on the SQLite ledger, then again on a real PostgreSQL server the tests start
# themselves (the fleet's tests run there), with branch coverage of both the suite and the bridge
# processes it starts, held to a floor (pyproject's [tool.coverage.report] fail_under). Without
# PostgreSQL, the SQLite pass reports coverage (no floor: the fleet's tests did not run) and the
# missing pass is announced.
COVERAGE = --cov --cov-report=term:skip-covered
test: install postgres
	@if $(HAVE_POSTGRES); then \
		$(BIN)/python -m pytest -q -n $(TEST_WORKERS) && \
		echo "--- again with the ledger on PostgreSQL" && \
		BRIDGE_TEST_LEDGER=postgres $(BIN)/python -m pytest -q -n $(TEST_WORKERS) $(COVERAGE); \
	else \
		$(BIN)/python -m pytest -q -n $(TEST_WORKERS) $(COVERAGE) --cov-fail-under=0; status=$$?; \
		echo "!!!!!! PostgreSQL is not available here: the suite on the PostgreSQL ledger was NOT run !!!!!!"; \
		exit $$status; \
	fi

bench: install
	$(BIN)/python -m bench.fidelity

# Live-call load on loopback: bridge pinned to CPU 0, emulator + generator on the rest; then the two bare sinks (about 90 s).
# More: make bench-load LOAD_ARGS="--calls 100 --duration 30", or LOAD_ARGS=--find-max.
bench-load: install
	$(BIN)/python -m bench.load $(LOAD_ARGS)

clean:
	rm -rf $(VENV) .venv313 .pytest_cache .mypy_cache .ruff_cache .coverage emulator-audio
