# `make demo` and `make test` work on a fresh machine: they create .venv on first use.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean venv lock

# Every package comes from requirements.lock (exact versions, direct and transitive), so a new machine gets
# what CI ran; pyproject.toml keeps ranges for people who pip install the library into their own environment.
$(STAMP): pyproject.toml requirements.lock requirements-nodeps.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: pip takes the CPU wheel on disk instead of a multi-GB CUDA build
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python tools/pip_check.py
	# test references whose declared dependencies they never import (why: requirements-nodeps.txt)
	$(BIN)/python -m pip install -q --no-deps -r requirements-nodeps.txt
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/failsight demo --out failsight-demo --force

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

# Two pytest workers on two threads each would oversubscribe the cores (failsight's default outside the sweep
# engine is every core per process): one thread per pytest worker keeps workers x threads <= cores.
test: $(STAMP) lint
	FAILSIGHT_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadgroup -q

# Refresh requirements.lock after changing dependencies in pyproject.toml (a throwaway venv resolves them).
lock:
	PY=$(PY) bash tools/lock.sh

bench: $(STAMP)
	$(BIN)/python benchmarks/reliability.py

clean:
	rm -rf $(VENV) failsight-demo .pytest_cache
