# Two entry points a fresh machine needs: `make demo` and `make test`.
# Both create .venv, install torch==2.13.0 (the CPU wheel on the project's machines) unless a
# torch is already importable there, then install this package in editable mode.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo-out

.PHONY: install test demo bench lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test]"

test: install
	$(BIN)/python -m pytest tests

demo: install
	$(BIN)/c2f demo --out $(DEMO_DIR)

bench: install
	PATH=$(abspath $(BIN)):$$PATH bash benchmarks/run_all.sh

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(DEMO_DIR)
