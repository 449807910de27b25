# prunec — two commands on a fresh machine:
#   make demo   builds the bundled example end to end
#   make test   runs lint, types and the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch first, pinned: the CPU wheel is served locally; any other spec pulls CUDA wheels.
TORCH_PIN := torch==2.13.0
# OpenMP threads must not spin-wait: tests run two workers on two cores (see prunec/cli.py).
export OMP_WAIT_POLICY := PASSIVE

.PHONY: demo test lint bench bench-streaming bench-scale results clean venv golden

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m prunec.demo

lint: $(STAMP)
	$(PY) -m ruff check prunec tests scripts benchmarks
	$(PY) -m ruff format --check prunec tests scripts benchmarks
	$(PY) -m mypy

test: lint
	$(PY) -m pytest -n 2 -q

# Performance targets live here, as ratios measured side by side in one run (not in tests).
bench: $(STAMP)
	$(PY) benchmarks/bench_check.py
	$(PY) benchmarks/bench_planner.py
	$(PY) benchmarks/bench_scoring.py
	$(PY) benchmarks/bench_onnx.py

# Writes two random checkpoints of ~2 GB under a temporary directory.
bench-streaming: $(STAMP)
	$(PY) benchmarks/bench_streaming.py

# A 3.4 GB bf16 Qwen3-1.7B-shaped checkpoint: memory, streaming speed, artifact size, scoring
# overhead (not in CI; about 5 GB of memory at the peak; `--size 0.6b` is the quick one).
bench-scale: $(STAMP)
	$(PY) benchmarks/bench_scale.py

# Regenerates docs/RESULTS.md (budget sweep of every strategy on the testbed).
results: $(STAMP)
	$(PY) scripts/make_results.py

golden: $(STAMP)
	$(PY) scripts/regen_golden.py

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
