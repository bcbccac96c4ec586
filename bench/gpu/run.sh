#!/usr/bin/env bash
# The device run of issue 17 (bench/gpu/README.md has the exact call): every section of
# `python -m bench.gpu` with the log teed to $OUT/gpu.log. Extra arguments go to bench.gpu
# (--cpu-dry-run here, --sections build,tests to rerun a part).
set -o pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-build/gpu-run}
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
{
    echo "bench/gpu/run.sh on $(hostname) at $(date -u +%FT%TZ)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || true
    "$PY" -m pip list 2>/dev/null | grep -iE '^(torch|triton|jax|jaxlib|numpy|pytest|hypothesis|ninja|setuptools|packaging) ' || true
    "$PY" -m bench.gpu --out "$OUT" "$@"
} 2>&1 | tee "$OUT/gpu.log"
