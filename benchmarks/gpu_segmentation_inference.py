"""The inference comparison of bench_segmentation_inference.py on the GPU (run by benchmarks/gpu.sh).

    python -m benchmarks.gpu_segmentation_inference            # on a CUDA machine, paper size, random weights
    python -m benchmarks.gpu_segmentation_inference --train-steps 500 --train-device cuda --train-patch 96 160 160
        # as gpu.sh runs it: weights fitted to the sample CT first (1 min on an H200), so agreement means something
    python -m benchmarks.gpu_segmentation_inference --smoke    # anywhere: tiny size, CPU when no GPU
"""

import sys

import torch

from benchmarks.bench_segmentation_inference import main

if __name__ == "__main__":
    if not torch.cuda.is_available() and "--smoke" not in sys.argv:
        sys.exit("gpu_segmentation_inference: no CUDA device; run it on the GPU machine, or with --smoke here.")
    main(device="cuda" if torch.cuda.is_available() else "cpu")
