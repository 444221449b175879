"""Pretraining input pipeline: view pairs per second per CPU core at the paper's patch (24 x 128 x 128).

Target: the bundle's pipeline reading the prepared cache (``ctfm prepare-pretraining``: int16 HU,
SPL, 3 x 1 x 1 mm, memory-mapped). Baseline: a plain MONAI pipeline that loads, reorients and
resamples each scan on the fly, then cuts the same 20 patches and applies the same view
augmentation. Both run in this process with one torch thread (= one core), on the real sample CT.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "ct_fm_pretrain"
PATCH, CROPS, SCANS = (24, 128, 128), 20, 4


def view_augmentation():
    """The bundle's own per-view augmentation, read from its train.json."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser["patch_size"] = list(PATCH)
    return parser.get_parsed_content("train#view_augmentation")


def baseline_pipeline(augment):
    from monai.transforms import (Compose, CropForegroundd, EnsureChannelFirstd, LoadImaged, Orientationd,
                                  RandSpatialCropSamplesd, ScaleIntensityRanged, Spacingd, SpatialPadd)

    per_scan = Compose([
        LoadImaged("image"), EnsureChannelFirstd("image"), Orientationd("image", axcodes="SPL"),
        Spacingd("image", pixdim=(3.0, 1.0, 1.0), mode="bilinear"), CropForegroundd("image", source_key="image"),
        SpatialPadd("image", spatial_size=PATCH, value=-1024),
        ScaleIntensityRanged("image", a_min=-1024, a_max=2048, b_min=0, b_max=1, clip=True),
        RandSpatialCropSamplesd("image", roi_size=PATCH, num_samples=CROPS, random_size=False),
    ])

    def run(path):
        crops = per_scan({"image": str(path)})
        return torch.stack([torch.stack([torch.as_tensor(augment(c["image"])) for _ in range(2)]) for c in crops])

    return run


def pairs_per_second(fn, paths) -> float:
    fn(paths[0])  # warm-up (imports, first allocation)
    t0 = time.perf_counter()
    n = sum(fn(p).shape[0] for p in paths)
    return n / (time.perf_counter() - t0)


def main() -> None:
    sys.path.insert(0, str(BUNDLE))
    from benchmarks.common import write_result
    from ctfm.data.sample_ct import fetch_sample_ct
    from ctfm.pretraining_cache import preprocess_to_hu
    from scripts.data import ScanPatchPairs

    torch.set_num_threads(1)
    sample = fetch_sample_ct()
    sources = [sample.abdomen_ct, sample.chest_nrrd]
    with tempfile.TemporaryDirectory() as tmp:
        cached = []
        for i, src in enumerate(sources):
            cached.append(Path(tmp) / f"scan{i}.npy")
            np.save(cached[-1], preprocess_to_hu(src))
        augment = view_augmentation()
        target = ScanPatchPairs(PATCH, CROPS, augment)
        target.set_random_state(0)
        order = [i % len(sources) for i in range(SCANS)]
        cache_rate = pairs_per_second(lambda p: target({"image": str(p)}), [cached[i] for i in order])
        base_rate = pairs_per_second(baseline_pipeline(augment), [sources[i] for i in order])
        shapes = {Path(s).name: list(np.load(c, mmap_mode="r").shape) for s, c in zip(sources, cached)}
    write_result(
        "pretrain_pipeline",
        figures={"pairs_per_s_per_core_from_cache": round(cache_rate, 2), "patch": list(PATCH), "crops_per_scan": CROPS,
                 "scans_timed": SCANS, "cached_shapes_SPL": shapes},
        baseline={"pairs_per_s_per_core_on_the_fly_monai": round(base_rate, 2)},
        ratio={"cache_over_on_the_fly": round(cache_rate / base_rate, 2)},
        notes=f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; one torch thread; sample CT is small (a real IDC scan is ~512x512x300 and costs the baseline far more "
              "per scan, while the cached path reads only the patches). Augmentation = the bundle's train.json.",
    )


if __name__ == "__main__":
    main()
