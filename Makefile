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

.PHONY: demo test install install-test bench kpi-queries clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e ".[test]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/rapport demo --customers $(DEMO_CUSTOMERS) --seed $(DEMO_SEED)

test: install-test
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/features.py

# The KPI query of `rapport data report`, compiled from its Ibis expression (after changing the history or the report).
kpi-queries: install
	$(BIN)/python -m features.report

clean:
	rm -rf $(VENV) data .pytest_cache .hypothesis
