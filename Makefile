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

# Two test processes (pytest-xdist), one per core of the project's 2-core machines; files stay
# whole on one process so their fixtures (Ray clusters, stores) are built once.
test: install
	$(BIN)/python -m pytest -n 2 --dist loadfile tests

demo: install
	$(BIN)/c2f demo --out $(DEMO_DIR)

# Every benchmark under benchmarks/, each with small arguments: a smoke run that prints each
# table within minutes on a laptop. The figures in benchmarks/README.md come from the larger
# commands written next to them there.
BENCH := PATH=$(abspath $(BIN)):$$PATH $(BIN)/python benchmarks
bench: install
	$(BENCH)/bench_cli.py --repeats 3
	$(BENCH)/bench_decode.py --minutes 0.5 --repeats 1 --gops 50 --dali-seconds 5
	$(BENCH)/bench_jpeg_decode.py --frames 8 --repeats 2
	$(BENCH)/bench_extract.py --batch-size 4 --threads 1 --batches 1
	$(BENCH)/bench_featstore.py --videos 100 --frames 20
	$(BENCH)/bench_train.py --videos 8 --frames 10 --classes 8 --epochs 1 --batch-size 4 \
		--coarse-hidden 32 --fine-hidden 64 --threads 1
	$(BENCH)/bench_shard_io.py --shards 2 --videos 8 --frames 10 --repeats 2
	$(BENCH)/bench_scale.py --videos 2000
	$(BENCH)/bench_loader.py --videos 100 --frames 40 --repeats 1 --train-videos 16 \
		--liteeval-hidden 64/128
	$(BENCH)/bench_cluster.py --videos 4 --repeats 1
	$(BENCH)/bench_finetune.py --size 64 --frames 4 --batch 2 --steps 2 --workers 1
# bench_official_liteeval.py needs the official LiteEval code checked out outside the repo
# (benchmarks/README.md says how), and gpu_check.sh a GPU machine: neither runs here.

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(DEMO_DIR)
