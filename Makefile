# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Single-threaded BLAS: on two cores, multi-threaded OpenBLAS inside numpy/implicit is much slower.
export OPENBLAS_NUM_THREADS ?= 1
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export MLFLOW_DISABLE_TELEMETRY ?= true

DEMO_CUSTOMERS ?= 20000
DEMO_SEED ?= 42

# Installs come from the lock files (the versions the suite was run with), then the project itself
# without its dependencies: a fresh machine gets the tested MLflow and BentoML, not the newest.
UV_VERSION ?= 0.13.9
LOCK := requirements.lock
TEST_LOCK := requirements-test.lock
# The platform the suite runs on: a lock resolved elsewhere could pick other wheels or markers.
LOCK_TARGET := --python-version 3.11 --python-platform x86_64-unknown-linux-gnu
# `make lock LOCK_ARGS=--upgrade` moves every pin to the newest release pyproject.toml allows.
LOCK_ARGS ?=

.PHONY: demo test lint install install-test lock bench kpi-queries clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv==$(UV_VERSION)

# --compile-bytecode: what pip does by default and uv does not. Without it, where Python may not
# write bytecode (PYTHONDONTWRITEBYTECODE, common in containers) every process compiles its
# libraries from source: a restarted service worker took 7.4 s instead of 4.5 s (benchmarks/serve.py).
$(VENV)/.installed: pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/uv pip install --quiet --python $(BIN)/python --compile-bytecode -r $(LOCK)
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(TEST_LOCK) | $(BIN)/python
	$(BIN)/uv pip install --quiet --python $(BIN)/python --compile-bytecode -r $(TEST_LOCK)
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

# The pins already in the lock files are kept while pyproject.toml allows them; the test lock is
# resolved within the runtime lock, so both install the same version of every shared package.
lock: | $(BIN)/python
	$(BIN)/uv pip compile --quiet $(LOCK_TARGET) --custom-compile-command "make lock" $(LOCK_ARGS) \
		pyproject.toml -o $(LOCK)
	$(BIN)/uv pip compile --quiet $(LOCK_TARGET) --custom-compile-command "make lock" $(LOCK_ARGS) \
		pyproject.toml --extra test -c $(LOCK) -o $(TEST_LOCK)

demo: install
	$(BIN)/rapport demo --customers $(DEMO_CUSTOMERS) --seed $(DEMO_SEED)

# The lint runs first: a change that breaks a type or an import fails in seconds, not after the suite.
test: lint
	$(BIN)/python -m pytest

# ruff (pyflakes, isort, bugbear, pyupgrade) and mypy, as configured in pyproject.toml.
lint: install-test
	$(BIN)/ruff check features serving training rapport synthetic
	$(BIN)/mypy

bench: install
	$(BIN)/python benchmarks/features.py

# The KPI query of `rapport data report`, compiled from its Ibis expression (after changing the history or the report).
kpi-queries: install
	$(BIN)/python -m features.report

clean:
	rm -rf $(VENV) data .pytest_cache .hypothesis
