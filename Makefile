# tvrbench — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

# Benchmark knobs (see README): empty DIDEMO_ROOT runs the built-in synthetic DiDeMo-format benchmark.
DIDEMO_ROOT ?=
CLIP ?=
DEVICE ?= auto
METHODS ?=
SEEDS ?=
OUT ?= outputs/bench-didemo
BENCH_ARGS ?=
BENCH_CONFIG ?= configs/bench/didemo.yaml

.PHONY: help install test test-all lint format bench-didemo bench-scoring bench-efficiency bench-input gpu-check clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## Build .venv and install tvrbench with the dev extra (idempotent)

test: $(STAMP) ## Fast test suite (what CI runs)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -m "not slow" -q

test-all: $(STAMP) ## Every test, slow ones included
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q

lint: $(STAMP) ## ruff (lint + format check) and mypy on src/
	$(VENV)/bin/ruff check src baselines benchmarks tests
	$(VENV)/bin/ruff format --check src baselines benchmarks tests
	$(VENV)/bin/mypy src

format: $(STAMP) ## Apply ruff formatting and safe fixes
	$(VENV)/bin/ruff check --fix src baselines benchmarks tests
	$(VENV)/bin/ruff format src baselines benchmarks tests

bench-didemo: $(STAMP) ## The main benchmark (synthetic DiDeMo-format data unless DIDEMO_ROOT is set)
	$(VENV)/bin/tvrbench bench --config $(BENCH_CONFIG) \
		$(if $(DIDEMO_ROOT),--config configs/bench/didemo_real.yaml --didemo_root $(DIDEMO_ROOT)) \
		$(if $(CLIP),--clip $(CLIP)) \
		$(if $(METHODS),--methods '$(METHODS)') \
		$(if $(SEEDS),--seeds $(SEEDS)) \
		--device $(DEVICE) --out_dir $(OUT) $(BENCH_ARGS)

bench-scoring: $(STAMP) ## Scoring-at-scale benchmark against the machine's matmul rate
	$(PY) benchmarks/scoring.py

bench-input: $(STAMP) ## Input pipeline (decode, cache, DataLoader) in frames per CPU-second vs one H100's rate
	OMP_NUM_THREADS=1 $(PY) benchmarks/input_pipeline.py

gpu-check: $(STAMP) ## One-shot GPU check (<= 8 min on one H100): results/gpu-check-<device>.json/.md; CPU form without CUDA
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) benchmarks/gpu_check.py

bench-efficiency: $(STAMP) ## Head FLOPs at GLSCL Table I's MSR-VTT sizes (and DiDeMo's) vs the published ones
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) benchmarks/published_efficiency.py --protocols msrvtt,didemo

clean: ## Remove the venv, caches and outputs
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache .mypy_cache
