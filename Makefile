# `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of torch keeps the install small; override for CUDA, e.g. `make TORCH_SPEC=torch demo`.
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= demo_out

.PHONY: demo test bench docs clean

$(BIN)/scalingfilter: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e '.[all,dev]'
	touch $@

demo: $(BIN)/scalingfilter
	$(BIN)/scalingfilter demo --output-dir $(DEMO_DIR)

# One worker per core (conftest pins one compute thread a process); a file's tests stay on one worker, so its
# module fixtures (a scored pool, a Ray cluster, an S3 server) are built once. At most 4 workers: each holds torch
# and starts its own Ray clusters and servers. `TEST_WORKERS=0`: one process.
TEST_WORKERS ?= auto
test: $(BIN)/scalingfilter
	$(BIN)/python -m pytest -q --durations=15 -n $(TEST_WORKERS) --maxprocesses 4 --dist loadfile tests

bench: $(BIN)/scalingfilter
	$(BIN)/python benchmarks/bench_score.py

docs:  # BENCHMARKS.md is built from docs/BENCHMARKS-*.md (tests/test_docs.py fails when it drifts)
	$(PYTHON) scripts/build_docs.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) build *.egg-info
