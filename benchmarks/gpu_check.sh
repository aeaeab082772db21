#!/usr/bin/env bash
# The whole GPU check and benchmark. Stage "build" runs where einfold is installed (no GPU needed): it compiles
# every benchmark and check program for the `ptx` and `cuda` targets into a bundle. Stage "device" runs on the
# GPU machine with only numpy, CuPy and torch: the GPU correctness tests, then the benchmark tables.
#   benchmarks/gpu_check.sh build [--quick]     # here; writes .gpu_bundle/
#   benchmarks/gpu_check.sh device [--quick]    # on the GPU machine, from the repository root
#   benchmarks/gpu_check.sh [--quick]           # both, where einfold and a GPU are on one machine
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE="${EINFOLD_GPU_BUNDLE:-.gpu_bundle}"
stage="all"
if [[ "${1:-}" == "build" || "${1:-}" == "device" ]]; then stage="$1"; shift; fi
quick=()
repeat=20
if [[ "${1:-}" == "--quick" ]]; then quick=(--quick); repeat=5; fi

if [[ "$stage" == "build" || "$stage" == "all" ]]; then
    rm -rf "$BUNDLE"
    python3 benchmarks/gpu_einsum.py --build-bundle "$BUNDLE" "${quick[@]}" --targets "${EINFOLD_GPU_TARGETS:-ptx,cuda}"
fi
if [[ "$stage" == "device" || "$stage" == "all" ]]; then
    nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader || true
    EINFOLD_GPU_BUNDLE="$BUNDLE" PYTHONPATH=. python3 -m pytest -q -m gpu -p no:cacheprovider --noconftest \
        -o addopts="" tests/test_gpu_run.py
    PYTHONPATH=. python3 benchmarks/gpu_einsum.py --run-bundle "$BUNDLE" --repeat "$repeat"
fi
