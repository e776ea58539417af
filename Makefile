# Install steps live here and nowhere else; CI runs `make test` on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install run test bench clean

$(BIN)/bridge: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

install: $(BIN)/bridge

run: install
	$(BIN)/bridge serve --dev --host $(HOST) --port $(PORT)

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python -m bench.fidelity

clean:
	rm -rf $(VENV) .venv313 .pytest_cache emulator-audio
