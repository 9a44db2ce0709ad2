# Every target does its own set-up: a fresh clone needs only python3 (>= 3.11) and npm.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
CLI_STAMP := $(VENV)/.installed-cli
BENCH_STAMP := $(VENV)/.installed-bench
# Every install resolves against the pinned tree: fast and the same with any pip
# (without it, pip backtracks through boto3/botocore releases; see tools/pin_constraints.py).
CONSTRAINTS := constraints.txt

.PHONY: demo test soak bench bench-quick lint typecheck clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e '.[dev]'
	touch $@

# The demo needs only the cli extra (rich, moto's server); the dev extra includes it.
$(CLI_STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e '.[cli]'
	touch $@

# The benchmarks also need the bench extra (dlt as a peer, pyinstrument).
$(BENCH_STAMP): $(STAMP) pyproject.toml $(CONSTRAINTS)
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e '.[dev,bench]'
	touch $@

tools/asl/node_modules/.installed: tools/asl/package.json tools/asl/package-lock.json
	npm ci --prefix tools/asl --no-audit --no-fund --loglevel=error
	touch $@

## demo: offline end-to-end run (embedded API + embedded S3), exits 0 on the expected outcome
demo: $(CLI_STAMP)
	$(BIN)/fanout-ingest demo

## test: unit + functional tests (real local servers), template and ASL checks
test: $(STAMP) tools/asl/node_modules/.installed
	$(BIN)/pytest -q

## soak: 20,000 items with injected faults, and the generative pipeline test at
## FANOUT_PROPERTY_EXAMPLES examples (default 400; the long run sets 2000) (also run by .ci/run)
soak: $(STAMP)
	$(BIN)/pytest -q -m soak tests/soak tests/property

## bench: the benchmark suite; results and plots in benchmarks/results/ (~15 min at most)
bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run

## bench-quick: every scenario at a small size (under 3 minutes)
bench-quick: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run --quick

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) tools/asl/node_modules .pytest_cache .mypy_cache .ruff_cache

## build-IngestFunction: what `sam build` runs (template.yaml: Metadata BuildMethod makefile)
# SAM sets ARTIFACTS_DIR. The runtime dependencies are installed as manylinux arm64
# wheels for the function's Python, so any host with python3 and pip builds it without
# Docker; only handler/ and ingest_core/ join them (tests/unit/test_packaging.py checks
# these two values against the function's Runtime and Architectures).
LAMBDA_PYTHON_VERSION := 3.13
LAMBDA_PLATFORM := manylinux2014_aarch64

.PHONY: build-IngestFunction
build-IngestFunction:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-compile --no-warn-conflicts \
		--target "$(ARTIFACTS_DIR)" --platform $(LAMBDA_PLATFORM) --implementation cp \
		--python-version $(LAMBDA_PYTHON_VERSION) --only-binary=:all: -r requirements-lambda.txt
	cp -R handler ingest_core "$(ARTIFACTS_DIR)/"
	find "$(ARTIFACTS_DIR)/handler" "$(ARTIFACTS_DIR)/ingest_core" -name __pycache__ -type d -prune -exec rm -rf {} +
