# xray3d — two commands: `make train` and `make test`. Both create the environment when it is missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP  := $(VENV)/.xray3d-env
ARGS   ?=

.DEFAULT_GOAL := help
.PHONY: help env prepare train test test-slow test-all lint format bench bench-eval bench-prepare bench-train clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# The environment is rebuilt only when the pins change. torch is the CPU build pinned by the
# constraints file on every pip call, and the lock is installed with --no-deps, so nothing can pull a
# multi-GB CUDA torch or a torchvision that fails to import (see docs/development.md).
$(STAMP): pyproject.toml requirements/lock.txt requirements/constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --no-deps -c requirements/constraints.txt -r requirements/lock.txt
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	$(PY) -c "import torch, lightning, monai, torchio, diffdrr.drr, wandb, surface_distance; print('environment ok: torch', torch.__version__)"
	@touch $(STAMP)

env: $(STAMP)  ## create / update the virtual environment (.venv)

prepare: env  ## prepare the embedded chest-CT dataset into data/embedded
	$(PY) -m xray3d.data.embedded --out data/embedded

train: prepare  ## train + evaluate the default model on the embedded dataset (ARGS="model=... ...")
	$(PY) train.py $(ARGS)

test: env  ## fast test suite (CPU, no slow tests)
	WANDB_MODE=disabled $(PY) -m pytest -m "not slow and not gpu" -q -p no:cacheprovider

test-slow: env  ## only the slow tests (reference-size grids, full preparation)
	WANDB_MODE=disabled $(PY) -m pytest -m "slow" -q -p no:cacheprovider

test-all: env  ## every test (GPU tests skip themselves without CUDA)
	WANDB_MODE=disabled $(PY) -m pytest -q -p no:cacheprovider

lint: env  ## ruff lint + format check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: env  ## ruff autofix + format
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: prepare  ## DRR renderer vs ITK benchmark (ms per DRR, NCC)
	$(PY) experiments/benchmarks/drr_vs_itk.py

bench-eval: env  ## evaluation time per case (metrics + clinical) vs model forward passes
	$(PY) experiments/benchmarks/eval_per_case.py --repeats 5 --models unet oned_concat attention_unet

bench-prepare: env  ## dataset preparation throughput per worker count on the real-format fixtures
	$(PY) experiments/benchmarks/prepare_throughput.py --workers 1 2 --copies 6 --repeat 2

bench-train: env  ## training throughput (load / render / fwd+bwd / optim per step) and RSS vs dataset size
	$(PY) experiments/benchmarks/train_throughput.py --device cpu --cases vertebra64:unet vertebra64:swinunetr femur128:unet --steps 5 --warmup 2
	$(PY) experiments/benchmarks/train_throughput.py --memory

clean:  ## remove run outputs (keeps the environment and prepared data)
	rm -rf logs outputs multirun .pytest_cache .ruff_cache
