# The two commands of the quick start: `make demo` and `make test`.
# Everything else here serves them (or CI, which calls `make test`), but for
# `make bench` and `make simulate`, which run the lab in benchmarks/.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test check serve bench simulate mutate venv clean lock

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "lequan needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

## Run the platform on its embedded default with a simulated crowd; serves until Ctrl-C.
demo: $(STAMP)
	$(BIN)/lequan demo $(DEMO_ARGS)

## Run the whole test suite (PostgreSQL and Redis tests run when their servers answer;
## LEQUAN_TEST_REQUIRE_SERVICES=1 makes them mandatory, as CI does).
## The suite runs in TEST_WORKERS processes (pytest-xdist), a file's tests together
## (they share its fixtures), then the `serial` tests alone (scripts/test);
## TEST_WORKERS=0 runs it all in one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	TEST_WORKERS=$(TEST_WORKERS) PYTHON=$(BIN)/python scripts/test $(PYTEST_ARGS)

check: $(STAMP)
	PATH=$(BIN):$$PATH scripts/check

serve: $(STAMP)
	$(BIN)/lequan serve

## Measure lequan and its baselines in one run on this machine (PostgreSQL and Redis
## on 127.0.0.1 for the full set), e.g. BENCH_ARGS="--runs 1 --only gate_memory --json".
bench: $(STAMP)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

## A flash crowd against a real server, the store checked after (exit 1 if broken),
## e.g. SIMULATE_ARGS="--people 100000 --stock 10000 --json".
simulate: $(STAMP)
	$(BIN)/python -m benchmarks simulate $(SIMULATE_ARGS)

## Mutation testing of src/lequan/domain/ against tests/unit (not part of CI: tens of
## minutes); prints the survivors. Results and the last score in docs/testing.md.
mutate: $(STAMP)
	rm -rf mutants
	$(BIN)/mutmut run --max-children $(or $(MUTATE_JOBS),2)
	$(BIN)/mutmut results

## Regenerate the lock file after changing pyproject.toml (needs `uv`).
lock:
	uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
	  --generate-hashes -o requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache lequan-data mutants
