#!/usr/bin/env bash
# The prepared GPU check: one call on a lent GPU machine, output pasted into the issue notes.
#   bash benchmarks/gpu.sh            (from the repository root, after `make test`'s set-up or an equivalent venv)
# Each benchmark measures its baseline in the same run and writes benchmarks/results/<name>.json.
# The machine reaches no network: fetch the sample CT first (`ctfm fetch-sample-data`) and carry
# the cache (~/.cache/ctfm or $CTFM_CACHE) with the run.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
status=0
run() { echo "=== $* ==="; timeout 240 "$PY" "$@" || { echo "FAILED ($?): $*"; status=1; }; }
run benchmarks/gpu_pretrain.py                 # paper config 16 scans x 20 patches, bf16: steps/s, TFLOP/s, loader
run benchmarks/gpu_segmentation_inference.py   # MONAI default vs tuned inference on the real CT
run -m benchmarks bench_search                 # one-pass vs per-window semantic search (uses cuda when present)
exit $status
