# prunec — two commands on a fresh machine:
#   make demo   builds the bundled example end to end
#   make test   runs lint, types and the test suite
# Both install into .venv exactly the versions in requirements/lock.txt (hash-checked).
#   make lock         re-resolves the lock from pyproject.toml's ranges (needs the network)
#   make test-latest  runs the suite on the newest releases those ranges allow (not in CI)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LOCK   ?= requirements/lock.txt
# torch is pinned and installed first: the CPU wheel is served locally (TORCH_WHEELS, pip's
# find-links); resolving anything that depends on torch before it is installed pulls CUDA wheels.
TORCH_PIN    := torch==2.13.0
TORCH_WHEELS ?= /opt/wheels
# The lock tool, in its own venv so that `make lock` works even when .venv is out of date.
UV_PIN := uv==0.13.9
UV     := build/uv/bin/uv
LOCK_FLAGS = pyproject.toml - --extra dev --generate-hashes --python-version 3.11 \
	--find-links $(TORCH_WHEELS) --custom-compile-command "make lock" --quiet
# OpenMP threads must not spin-wait: tests run two workers on two cores (see prunec/cli.py).
export OMP_WAIT_POLICY := PASSIVE

.PHONY: demo test lint lock test-latest bench bench-streaming bench-scale results clean venv golden

venv: $(STAMP)

# Installs in place (a no-op for what already matches): torch's hashed lock entry first, then
# the whole lock without resolving anything, then prunec itself (editable), then `pip check`.
$(STAMP): $(LOCK) pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	sed -n '/^torch==/,/[^\\]$$/p' $(LOCK) \
	    | $(PY) -m pip install -q --require-hashes --no-deps -r /dev/stdin
	$(PY) -m pip install -q --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip check
	touch $(STAMP)

$(UV):
	$(PYTHON) -m venv build/uv
	build/uv/bin/python -m pip install -q $(UV_PIN)

# Keeps the locked versions that still satisfy pyproject.toml; `make lock UPGRADE=1` moves
# every package to the newest release its range allows.
lock: $(UV)
	echo "$(TORCH_PIN)" | $(UV) pip compile $(LOCK_FLAGS) $(if $(UPGRADE),--upgrade) -o $(LOCK)

# A separate venv from a fresh resolution (newest allowed releases, torch still pinned).
test-latest: $(UV)
	rm -rf build/venv-latest
	echo "$(TORCH_PIN)" | $(UV) pip compile $(LOCK_FLAGS) --upgrade -o build/lock-latest.txt
	grep -o '^[^ #]*==[^ ]*' $(LOCK) > build/pins-locked.txt
	grep -o '^[^ #]*==[^ ]*' build/lock-latest.txt > build/pins-latest.txt
	@echo "newer than the lock (< locked, > latest):"
	-diff build/pins-locked.txt build/pins-latest.txt
	$(MAKE) test VENV=build/venv-latest LOCK=build/lock-latest.txt

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
	$(PY) benchmarks/bench_search.py
	$(PY) benchmarks/bench_onnx.py
	$(PY) benchmarks/bench_genai.py

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
