# Every target does its own set-up: a fresh clone needs only python3 (>= 3.11) and npm.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: demo test soak bench bench-quick lint typecheck clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

tools/asl/node_modules/.installed: tools/asl/package.json tools/asl/package-lock.json
	npm ci --prefix tools/asl --no-audit --no-fund --loglevel=error
	touch $@

## demo: offline end-to-end run (embedded API + embedded S3), exits 0 on the expected outcome
demo: $(STAMP)
	$(BIN)/fanout-ingest demo

## test: unit + functional tests (real local servers), template and ASL checks
test: $(STAMP) tools/asl/node_modules/.installed
	$(BIN)/pytest -q

## soak: 20,000 items with injected faults (also run by .ci/run)
soak: $(STAMP)
	$(BIN)/pytest -q -m soak -W error::ResourceWarning

## bench: the benchmark suite; results and plots in benchmarks/results/
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks.run --quick

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) tools/asl/node_modules .pytest_cache .mypy_cache .ruff_cache
