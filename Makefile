# The two commands of the quick start: `make demo` and `make test`.
# Everything else here serves them (or CI, which calls `make test`).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test check serve venv clean lock

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
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

check: $(STAMP)
	PATH=$(BIN):$$PATH scripts/check

serve: $(STAMP)
	$(BIN)/lequan serve

## Regenerate the lock file after changing pyproject.toml (needs `uv`).
lock:
	uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
	  --generate-hashes -o requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache lequan-data
