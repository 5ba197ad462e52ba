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

.PHONY: demo test install install-test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv

# --compile-bytecode: what pip does by default and uv does not. Without it, where Python may not
# write bytecode (PYTHONDONTWRITEBYTECODE, common in containers) every process compiles its
# libraries from source: a restarted service worker took 7.4 s instead of 4.5 s (benchmarks/serve.py).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e ".[test]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/rapport demo --customers $(DEMO_CUSTOMERS) --seed $(DEMO_SEED)

test: install-test
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/features.py

clean:
	rm -rf $(VENV) data .pytest_cache .hypothesis
