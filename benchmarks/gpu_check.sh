#!/usr/bin/env bash
# One GPU check for issue 14 (see benchmarks/gpu_check.py for what it measures): at most 8 minutes on one GPU,
# one JSON and one markdown file of results under $OUT when it is set, else under benchmarks/results/.
#
#   benchmarks/gpu_check.sh              # on the GPU machine
#   benchmarks/gpu_check.sh --dry-run    # on a CPU with tiny models (CI): seconds
#
# The machine it is prepared for has torch, timm, onnx, onnxruntime (CPU) and OpenCV but not this project's small
# dependencies; give them as a folder made beforehand and carried with the tree, e.g.
#   pip install --target gpu_deps --only-binary=:all: --python-version 3.X psutil nvidia-ml-py jsonschema \
#       safetensors kornia kornia_rs pillow
# and run with GPU_CHECK_DEPS=gpu_deps. Python: $PYTHON, else .venv/bin/python when there, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${GPU_CHECK_DEPS:+:$GPU_CHECK_DEPS}${PYTHONPATH:+:$PYTHONPATH}"
OUTDIR="${OUT:-benchmarks/results}"
# the script keeps to its own budget (450 s); the timeout is the backstop: SIGINT first (it writes what it has)
exec timeout --signal=INT --kill-after=20 "${GPU_CHECK_TIMEOUT:-480}" "$PY" benchmarks/gpu_check.py --out "$OUTDIR" "$@"
