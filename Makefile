# nmt: every target sets itself up (virtual environment + editable install) on first use.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Which torch to install when none is importable yet. Elsewhere, set it to the build you need,
# e.g. `make install TORCH_SPEC=torch` (newest, CUDA on Linux) or a CPU index wheel.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
ARGS ?=
RUN ?= runs/default
EXPERIMENT ?= default

.PHONY: help install train test test-all lint eval bench prepare clean wheels gpu-check

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install nmt with its dev extra (reuses an installed torch)

$(STAMP): pyproject.toml
	@bash scripts/install.sh "$(PYTHON)" "$(VENV)" "$(TORCH_SPEC)"
	@touch $@

train: $(STAMP) ## train the default model on the bundled corpus, evaluate, report (RUN=dir ARGS=overrides)
	$(PY) -m nmt.train experiment=$(EXPERIMENT) hydra.run.dir=$(RUN) $(ARGS)

prepare: $(STAMP) ## tokenize and cache the default corpus (ARGS=overrides)
	$(PY) -m nmt.prepare $(ARGS)

test: $(STAMP) ## run the default test suite (not slow)
	$(PY) -m pytest -q $(ARGS)

test-all: $(STAMP) ## run every test, slow ones included
	$(PY) -m pytest -q -m "slow or not slow" $(ARGS)

lint: $(STAMP) ## ruff + mypy
	$(VENV)/bin/ruff check nmt tests scripts
	$(VENV)/bin/ruff format --check nmt tests scripts
	$(VENV)/bin/mypy

eval: $(STAMP) ## score the default run's best checkpoint on the lo.de-en test set (RUN=dir)
	$(PY) -m nmt.evaluate ckpt=$(RUN)/best.pt src=data/lo.de-en/test.de ref=data/lo.de-en/test.en \
		json_output=$(RUN)/eval.json hyp_output=$(RUN)/eval.hyp.en $(ARGS)

bench: $(STAMP) ## training/decoding benchmark (ARGS="--corpus ../shared/corpora/lo.de-en ...")
	$(PY) scripts/benchmark.py $(ARGS)

# The GPU check's dependencies, torch excluded, as wheels for a machine without a package
# index; built for WHEEL_PYTHON's version and platform (run it again with the GPU machine's).
WHEEL_PYTHON ?= $(PY)
GPU_OUT ?= gpu_check_report

wheels: $(STAMP) ## fill .whl/ with the GPU check's dependencies, no torch (WHEEL_PYTHON=python3.X)
	$(WHEEL_PYTHON) -m pip wheel -q -w .whl numpy sentencepiece sacrebleu hydra-core tqdm pytest

gpu-check: ## the GPU check (scripts/gpu_check.sh; GPU_OUT=dir, ARGS="--dry-run" for the CPU smoke)
	bash scripts/gpu_check.sh $(GPU_OUT) $(ARGS)

clean: ## remove caches and outputs (keeps .venv)
	rm -rf data/cache outputs multirun .pytest_cache .mypy_cache .ruff_cache
