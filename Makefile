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

# Three workers, also on 2 cores (conftest pins one compute thread a process): about a quarter of the suite is
# waiting (Ray workers starting, hang timeouts, a paused lock holder) that a third worker fills; a fourth mostly
# slows the Ray tests' worker start-ups (2 workers: 6:42 on 2 cores; 3: 4:08-4:39 now; 4: 4:34, a noisy machine).
# A file's tests stay on one worker, so its module fixtures (a scored pool, a Ray cluster) are built once.
# `TEST_WORKERS=0`: one process. PYTHONDONTWRITEBYTECODE is cleared for the run: where a machine sets it, every
# worker and every command the tests start would compile the package again, and pytest would rewrite the test
# modules' asserts in each worker (~3 s of CPU a process).
TEST_WORKERS ?= 3
test: $(BIN)/scalingfilter
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadfile tests

bench: $(BIN)/scalingfilter
	$(BIN)/python benchmarks/bench_score.py

docs:  # BENCHMARKS.md is built from docs/BENCHMARKS-*.md (tests/test_docs.py fails when it drifts)
	$(PYTHON) scripts/build_docs.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) build *.egg-info
