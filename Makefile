# `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of torch keeps the install small; override for CUDA, e.g. `make TORCH_SPEC=torch demo`.
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= demo_out

.PHONY: demo test bench clean

$(BIN)/scalingfilter: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/scalingfilter
	$(BIN)/scalingfilter demo --output-dir $(DEMO_DIR)

test: $(BIN)/scalingfilter
	$(BIN)/python -m pytest -q tests

bench: $(BIN)/scalingfilter
	$(BIN)/python benchmarks/bench_score.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) build *.egg-info
