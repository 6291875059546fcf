#!/usr/bin/env bash
# Creates .venv and installs alignloop with pinned dependencies (infra/constraints.txt), using uv.
# torch: a machine without an NVIDIA GPU gets the CPU build (no GBs of CUDA wheels); with a GPU, the normal wheel.
#   - if pip is configured with find-links (PIP_FIND_LINKS), uv is given the same links (uv does not read pip's config);
#   - otherwise a CPU-only machine uses the PyTorch CPU index.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
EXTRAS=${EXTRAS:-dev,ray}  # ray: prefect-ray fan-out (tests/flows/test_ray_fanout.py runs it in CI)

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check "uv>=0.8"
UV=".venv/bin/uv"
export VIRTUAL_ENV="$PWD/.venv"
# Byte-compile site-packages at install: uv does not by default, and where PYTHONDONTWRITEBYTECODE is set (as on CI
# here) every process would otherwise compile prefect/mlflow/dvc/torch from source on import (measured: 12.8 s vs
# 5.0 s of CPU for `import prefect, mlflow, dvc.repo, networkx`), paid by every CLI call, worker, test subprocess
# and the Prefect server.
export UV_COMPILE_BYTECODE=1

links=()
fl=${PIP_FIND_LINKS:-$(.venv/bin/python -m pip config get global.find-links 2>/dev/null || true)}
for d in $fl; do links+=(--find-links "$d"); done

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  "$UV" pip install "torch==${TORCH_VERSION}"
elif [ ${#links[@]} -gt 0 ]; then
  "$UV" pip install "${links[@]}" "torch==${TORCH_VERSION}"
else
  "$UV" pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"
fi
# torch is already satisfied, so resolving the project never pulls another build.
"$UV" pip install "${links[@]}" -c infra/constraints.txt -e ".[${EXTRAS}]"
