#!/usr/bin/env bash
# The GPU run of issue 12, one section per device call (each well inside 5 minutes):
#
#   bash bench/gpu.sh speed     # bare/server s/img eager and compiled, MFU, batching,
#                               # lane vs unbounded, time to the first partial image
#   bash bench/gpu.sh memory    # peak GPU memory and s/img per memory mode
#
# On the device: the wheels from bench/gpu_wheels.sh travel in .whl (carry: [".whl"]).
# Results go to $OUT as they are measured (results.jsonl, summary.md, the log), so a run
# stopped at its limit still returns its figures. Extra arguments go to bench/gpu.py
# (--budget SECONDS, --no-compile, --modes LABEL...).
set -uo pipefail
cd "$(dirname "$0")/.."
section="${1:?usage: bash bench/gpu.sh speed|memory [gpu.py arguments]}"
shift
OUT="${OUT:-/tmp/gpu-bench-out}"
mkdir -p "$OUT"
SITE="${SITE:-/tmp/site}"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl || exit 1
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  # diffusers imports torchao whenever it is installed: one that does not import with this
  # torch would break every section, so it goes, and the int8/fp8 modes record a skip.
  if ! python3 -c "import torchao" >"$OUT/torchao-import-$section.txt" 2>&1; then
    echo "torchao does not import here (see torchao-import-$section.txt); removing it"
    rm -rf "$SITE"/torchao "$SITE"/torchao-*.dist-info
  fi
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# Compiled kernels stay on the machine between the two calls while it is warm.
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-/tmp/inductor-cache}"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
  >"$OUT/nvidia-smi-$section.csv" 2>&1 || true
python3 bench/gpu.py "$section" --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu-$section.log"
