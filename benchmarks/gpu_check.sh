#!/usr/bin/env bash
# On the GPU machine, from anywhere in the checkout: install the carried wheels that the image lacks
# (the folder benchmarks/gpu_wheels.sh made, default .whl/), then run every part of the GPU check.
# Writes gpu_check.json to $OUT (else results/benchmarks/gpu/); arguments go to gpu_check.py.
#
#   bash benchmarks/gpu_check.sh                       # everything, within a 450 s budget
#   bash benchmarks/gpu_check.sh --parts pipeline      # one part again
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${GPU_WHEELS:-.whl}
args=()
if [ -d "$WHEELS" ]; then
    args+=(--wheels "$WHEELS")
else
    echo "gpu_check.sh: no $WHEELS folder: using the packages installed as they are" >&2
fi
exec "$PY" benchmarks/gpu_check.py ${args[@]+"${args[@]}"} "$@"
