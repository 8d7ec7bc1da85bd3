#!/usr/bin/env bash
# The GPU run, prepared: on a CUDA machine with this checkout's environment already installed,
#
#     scripts/bench_gpu.sh [OUTPUT_DIR] [bench_gpu.py options...]
#
# runs the CUDA-marked tests and then times every head (scripts/bench_gpu.py), in under
# 8 minutes, and writes OUTPUT_DIR/bench_gpu.json and OUTPUT_DIR/bench_gpu.md (default
# OUTPUT_DIR: docs/benchmarks/gpu-<GPU name>-<date>, ready to commit). It installs nothing and
# reaches no network: Cut Cross-Entropy and Liger are measured where they are already
# installed, and listed as not importable otherwise. Exit status: bench_gpu.py's (1 when a test
# failed; the figures are written either way).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PIP_NO_INDEX=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

gpu=$("$PYTHON" - <<'PY'
import sys
try:
    import pytest  # noqa: F401
    import torch
except ImportError as error:
    sys.exit(f"bench_gpu.sh: {error}; install the checkout's environment first "
             "(pip install -e '.[dev]') - this script installs nothing")
if not torch.cuda.is_available():
    sys.exit(f"bench_gpu.sh: torch {torch.__version__} sees no CUDA device; for the CPU smoke "
             "test run: python scripts/bench_gpu.py --reduced")
print(torch.cuda.get_device_name().replace(" ", "_"))
PY
)
out=${1:-docs/benchmarks/gpu-${gpu}-$(date +%Y%m%d)}
shift $(( $# > 0 ? 1 : 0 ))
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
# bench_gpu.py keeps to its own budgets (tests 150 s, timings 270 s); the timeout is a backstop.
exec timeout 480 "$PYTHON" scripts/bench_gpu.py --output-dir "$out" \
    --tests-timeout-s 150 --budget-s 270 "$@"
