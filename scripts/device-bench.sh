#!/usr/bin/env bash
# The GPU checks of docs/benchmarks.md in one command on a lent GPU machine (about 5-8 minutes):
#   1. tests/test_vectorized_gpu.py: eager, CUDA-graph and compile + graph rounds equal the loop;
#   2. bench.vectorized on W and W-large (loop, vmap, vmap+graph, vmap+compile+graph on the GPU;
#      Flower and pfl-research are CPU-only references and are left out), with the GPU claims
#      (W >= 15,000 client-updates/s and >= 200x the loop; W-large >= 10,000/s) checked at the end.
# Results land in $OUT (the device tool brings them back): gpu.txt, tests.log, bench.log,
# bench.json and benchmarks.md (this tree's docs/benchmarks.md with the GPU section filled in;
# copy that section into the repository's file).
# The machine's image has python3 with torch but not pydantic: run scripts/device-wheels.sh here
# first and pass carry [".whl"]; the wheels are installed into /tmp/site there.
# Usage (device tool): command "bash scripts/device-bench.sh", carry [".whl"], timeout_s 600.
# It also runs on a machine without a GPU, where the tests skip and the bench refuses (exit 2).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-build/device}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
PY="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "device-bench: installing .whl/ failed" >&2; exit 1; }
  export PYTHONPATH="$PWD:/tmp/site"
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv 2>&1 || true
  "$PY" -c "import torch, pydantic; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'pydantic', pydantic.VERSION)"
} | tee "$OUT/gpu.txt"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 2)" \
  || { echo "device-bench: torch sees no CUDA device; nothing to measure" >&2; exit 2; }
status=0
timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_vectorized_gpu.py 2>&1 | tee "$OUT/tests.log" || status=1
cp docs/benchmarks.md "$OUT/benchmarks.md"
# per engine at most 150 s (one compile warm-up included), the bench at most 390 s, so that the whole
# call ends inside the device tool's 600 s; bench.json is rewritten after every engine (kept if cut short)
timeout 390 "$PY" -m bench.vectorized --device cuda --no-flower --pfl-python '' --timeout 150 \
  --json "$OUT/bench.json" --out "$OUT/benchmarks.md" 2>&1 | tee "$OUT/bench.log" \
  || { status=1; [[ -f "$OUT/bench.json" ]] && "$PY" -m bench.vectorized --from-json "$OUT/bench.json" --out "$OUT/benchmarks.md"; }
echo "device-bench: exit $status (tests: $OUT/tests.log, table: $OUT/benchmarks.md)"
exit $status
