#!/usr/bin/env bash
# The prepared GPU check: one call on a lent GPU machine, output pasted into the issue notes.
#   bash benchmarks/gpu.sh            (from the repository root, after `make test`'s set-up or an equivalent venv)
# Each benchmark measures its baseline in the same run and writes benchmarks/results/<name>.json.
# The machine reaches no network: fetch the sample CT first (`ctfm fetch-sample-data`) and carry
# the cache (~/.cache/ctfm or $CTFM_CACHE) with the run. Where the machine has its own torch but no
# MONAI (as on the H200 of 2026-11-28), carry the monai, nibabel and pytorch-ignite wheels of
# pyproject.toml's pins, `pip install --no-deps --target /tmp/site` them, and run with
# PYTHONPATH=/tmp/site:src PY=python3.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
status=0
run() { echo "=== $* ==="; timeout "${LIMIT:-240}" "$PY" "$@" || { echo "FAILED ($?): $*"; status=1; }; }
run -m benchmarks.gpu_pretrain                 # paper config 16 scans x 20 patches, bf16: steps/s, TFLOP/s, loader
# Segmentation: fit the bundle's network to the sample CT on the GPU at the paper's patch (500 steps of
# 0.12 s on an H200), then the authors' settings (fp32, overlap 0.625) vs tuned inference with those weights on this machine's CPU
# (the issue's figure: seconds and label agreement) and on the GPU (the second call reuses the weights).
SEG=(--train-steps 500 --train-device cuda --train-patch 96 160 160 --train-structures 10)
LIMIT=430 run -m benchmarks bench_segmentation_inference "${SEG[@]}"
run -m benchmarks.gpu_segmentation_inference "${SEG[@]}"
run -m benchmarks bench_search                 # one-pass vs per-window semantic search (uses cuda when present)
exit $status
