# The two commands: `make demo` (3 iterations on the embedded default) and `make test` (the suite).
# Both install everything first (uv, pinned; CPU torch on machines without an NVIDIA GPU).
VENV := .venv
BIN := $(VENV)/bin
# dvc.yaml commands say `python`: the venv's
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# Environment defaults: the Python code's single definition is components/env.py (TELEMETRY_OFF, TOY_DEFAULTS,
# RUNTIME); these exports repeat the ones `make` targets need (the embedded default and the tests). Keep in step.
# HF_HUB_OFFLINE / OMP_NUM_THREADS (TOY_DEFAULTS) are for the toy only: run a real config with `alignloop run`
# outside make (it sets them only for `gold: toy`, components.env.offline_for).
export HF_HUB_OFFLINE := 1
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export DVC_NO_ANALYTICS := 1
export OMP_NUM_THREADS := 1
export TOKENIZERS_PARALLELISM := false

ITERATIONS ?= 3
WORKSPACE ?= workspace

.PHONY: install bootstrap demo test test-service lint clean

install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml infra/constraints.txt infra/install.sh
	bash infra/install.sh
	touch $@

bootstrap: install  ## corpus → prompt pool → tokenizer → SFT policy (dvc.yaml; cached)
	$(BIN)/dvc repro

demo: bootstrap
	$(BIN)/alignloop run --config configs/tiny.yaml --iterations $(ITERATIONS) --workspace $(WORKSPACE)

test: install
	$(BIN)/python -m pytest tests -q

test-service: install  ## only the crash-resume, schedule and permanent-failure tests (part of `make test` too)
	$(BIN)/python -m pytest tests/service -q -m service

lint: install
	$(BIN)/ruff check components tasks flows infra tests benchmarks

clean:
	rm -rf $(WORKSPACE)

STACK ?= $(WORKSPACE)/stack

stack: install  ## Prefect server + MLflow (PostgreSQL, S3) + S3 endpoint on loopback; see infra/README.md
	$(BIN)/alignloop stack up --dir $(STACK)

stack-down:
	$(BIN)/alignloop stack down --dir $(STACK)
.PHONY: stack stack-down
