# rlhf-bench: `make run` and `make test` create the environment themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch lies on this project's machines; set TORCH_SPEC=torch (or a CUDA wheel) elsewhere.
TORCH_SPEC ?= torch==2.13.0
ARGS ?=
PYTEST_ARGS ?=
# the suite runs in this many worker processes (pytest-xdist; an idle worker takes tests from the busy one)
PYTEST_WORKERS ?= 2

.DEFAULT_GOAL := help
.PHONY: help run test test-fast format lint docs clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  (make run ARGS='method=ppo seed=1' passes Hydra overrides)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.torch: | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	@touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(BIN)/python -m pip install -q -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.torch
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $@ $(VENV)/.installed

run: $(VENV)/.installed  ## create the environment and run the default experiment (SFT -> RM -> PPO -> eval)
	$(BIN)/rlhf-bench $(ARGS)

test: $(VENV)/.installed-dev  ## create the environment with dev extras and run the test suite
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

test-fast: $(VENV)/.installed-dev  ## the test suite without the slow end-to-end tests
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist worksteal -m "not slow" $(PYTEST_ARGS)

format: $(VENV)/.installed-dev  ## ruff format + fix
	$(BIN)/ruff format rlhf_bench tests sweeps examples benchmarks
	$(BIN)/ruff check --fix rlhf_bench tests sweeps examples benchmarks

lint: $(VENV)/.installed-dev  ## ruff check
	$(BIN)/ruff check rlhf_bench tests sweeps examples benchmarks
	$(BIN)/ruff format --check rlhf_bench tests sweeps examples benchmarks

docs: $(VENV)/.installed-dev  ## regenerate the generated tables in README.md and docs/
	$(BIN)/python -m rlhf_bench.report.docs

clean:  ## remove the environment and generated outputs
	rm -rf $(VENV) artifacts results/runs results/multirun
