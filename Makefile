# shardflow: `make run` and `make test` are all a new user needs.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python

.PHONY: run test lint typecheck pytest bench bench-quick bench-report soak clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

.stamp-run: $(BIN)/activate pyproject.toml
	$(PY) -m pip install -q -e .
	touch $@

.stamp-test: $(BIN)/activate pyproject.toml package.json
	$(PY) -m pip install -q -e '.[test,bench]'
	npm install --no-audit --no-fund --silent
	touch $@

run: .stamp-run
	$(BIN)/shardflow run

lint: .stamp-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check processor shard_consumer sinks
	$(BIN)/mypy

pytest: .stamp-test
	$(BIN)/pytest -m "not soak" --durations=15

test: lint pytest

bench: .stamp-test
	$(PY) -m benchmarks

bench-quick: .stamp-test
	$(PY) -m benchmarks --quick

bench-report: .stamp-test
	$(PY) -m benchmarks.report

soak: .stamp-test
	$(PY) -m tests.soak --minutes 3

clean:
	rm -rf $(VENV) .stamp-* node_modules shardflow-data
