"""Semantic search: target window embeddings from whole-volume feature maps (pooled) vs one crop per window.

Both sides run the encoder in fp32, the search tool's default (no precision gain on either side).

Same grid, same query (the window at the middle of the real abdomen CT, embedded each method's
way); reports both times, the number of encoder passes, and whether the best match is the same
window. Full size: the tool's defaults (``ctfm search``: 3 x 1 x 1 mm grid, box 16 x 64 x 64, stride
8 x 16 x 16). Target: pooled >= 10x faster. ``--smoke`` runs a tiny size (what the test suite can afford).

    python -m benchmarks bench_search            # full size: minutes (thousands of windows one by one)
    python -m benchmarks bench_search --smoke
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.common import write_result
from ctfm.analysis.patch_embeddings import (cosine_similarity, pass_offsets, pooled_window_embeddings, shared_level,
                                            window_embeddings)
from ctfm.analysis.search import DEFAULT_BOX, DEFAULT_STRIDE
from ctfm.data.sample_ct import fetch_sample_ct
from ctfm.networks import build_encoder
from ctfm.registry import EMBEDDING_SPACING
from ctfm.transforms import preprocess


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny size, to check the script runs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args, _ = parser.parse_known_args()  # `python -m benchmarks` passes the benchmark names on
    if args.smoke:
        spacing, window, stride = (6, 6, 6), (16, 16, 16), (8, 16, 16)
    else:
        spacing, window, stride = tuple(EMBEDDING_SPACING), DEFAULT_BOX, DEFAULT_STRIDE
    torch.manual_seed(0)
    encoder = build_encoder().eval().to(args.device)
    image = preprocess(fetch_sample_ct().abdomen_ct, spacing=spacing)
    t = time.perf_counter()
    fast, starts = pooled_window_embeddings(encoder, image, window, stride, device=args.device, progress=False)
    pooled_s = time.perf_counter() - t
    t = time.perf_counter()
    slow, _ = window_embeddings(encoder, image, window, stride, batch_size=8, device=args.device, progress=False)
    windows_s = time.perf_counter() - t
    q = len(starts) // 2
    best_fast, best_slow = cosine_similarity(fast[q], fast).argmax(), cosine_similarity(slow[q], slow).argmax()
    same = int(best_fast == best_slow)
    apart = np.abs(starts[best_fast] - starts[best_slow]).tolist()  # voxels between the two best windows
    offsets = pass_offsets(stride)
    full_passes = sum(1 for off in offsets if shared_level(off) is None)  # the others continue the unshifted pass
    write_result(
        "search" + ("_smoke" if args.smoke else ""),
        figures={"volume": list(image.shape[1:]), "window": list(window), "stride": list(stride),
                 "windows": len(starts),
                 "pooled_s": round(pooled_s, 2), "pooled_encoder_passes": full_passes,
                 "pooled_maps_continued_from_a_pass": len(offsets) - full_passes, "same_best_match": same,
                 "best_matches_apart_voxels": apart,
                 "device": str(args.device)},
        baseline={"per_window_s": round(windows_s, 2), "per_window_encoder_passes": len(starts)},
        ratio={"speedup": round(windows_s / pooled_s, 1)},
        notes="random-weight encoder (timing does not depend on the weights); real abdomen CT from the sample data",
    )


if __name__ == "__main__":
    main()
