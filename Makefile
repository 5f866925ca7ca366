# Two commands on a fresh clone: `make demo` and `make test`. Both create .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export RAY_USAGE_STATS_ENABLED ?= 0
export RAY_AUTH_MODE ?= disabled
export RAY_TRAIN_ENABLE_PRINT_PATCH ?= 0
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export WANDB_MODE ?= offline

.PHONY: install demo test test-unit test-integration bench docs clean

install: $(STAMP)

# torch first and pinned: an unpinned torch (or one pulled in by transformers) is a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .[dev]
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/raydistill demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra --durations=15

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not integration"

test-integration: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m integration

# The quick set of every benchmark (bench/*.py --quick) and a summary; figures in BENCHMARKS.md.
# torch stays pinned in the same install so that the bench extras can never move it.
bench: $(STAMP)
	$(BIN)/pip install -q torch==2.13.0 -e .[bench]
	$(BIN)/python bench/run_quick.py

# docs/config.md and docs/cli.md from DistillConfig and the argument parsers
# (tests/unit/test_docs_reference.py fails when they drift).
docs: $(STAMP)
	$(BIN)/python -m tools.docs_ref --write

clean:
	rm -rf $(VENV) .pytest_cache demo_runs
