"""Pretraining input pipeline: view pairs per second per CPU core at the paper's patch (24 x 128 x 128).

Target: the bundle's DataLoader pipeline reading the prepared cache (``ctfm prepare-pretraining``:
int16 HU, SPL, 3 x 1 x 1 mm, memory-mapped) with its per-view CPU transforms (``train#view_augmentation``:
random resized crop, flip); histogram shift and smoothing run batched on the training device
(``train#device_augmentation``), timed separately here on this CPU. Baseline: a plain MONAI pipeline
that loads, reorients and resamples each scan on the fly, cuts the same 20 patches and applies the
paper's whole view augmentation (crop, flip, ``RandHistogramShift``, ``RandGaussianSmooth``) view by
view. Both run in this process with one torch thread (= one core).

Input: the real sample abdomen CT resampled to a typical clinical grid (0.8 x 0.8 x 1.0 mm, about
457 x 379 x 336 voxels, int16 NIfTI), because the sample itself is a small 3 mm volume and what the
baseline pays per scan depends on the scan's size.

    python -m benchmarks bench_pretrain_pipeline
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import BUNDLES  # noqa: E402

BUNDLE = BUNDLES / "ct_fm_pretrain"
PATCH, CROPS, SCANS = (24, 128, 128), 20, 4


CLINICAL_SPACING = (0.8, 0.8, 1.0)


def bundle_part(id_: str):
    """A component of the bundle's train.json (the per-view CPU transforms, the device augmentation)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser["patch_size"] = list(PATCH)
    return parser.get_parsed_content(id_)


def paper_view_augmentation():
    """The paper's whole per-view augmentation as plain MONAI transforms, view by view on the CPU."""
    from monai.transforms import Compose, RandFlip, RandGaussianSmooth, RandHistogramShift

    from scripts.data import RandomResizedCrop

    return Compose([RandomResizedCrop(PATCH, scale=(0.33, 1.0)), RandFlip(spatial_axis=0, prob=0.5),
                    RandHistogramShift(num_control_points=5, prob=0.5), RandGaussianSmooth(prob=0.5)])


def clinical_size_copy(source, path: Path) -> list[int]:
    """Write ``source`` resampled to ``CLINICAL_SPACING`` as int16 NIfTI; returns its shape."""
    import nibabel as nib
    from monai.transforms import LoadImage, Spacing

    image = LoadImage(image_only=True, ensure_channel_first=True)(str(source))
    fine = Spacing(pixdim=CLINICAL_SPACING, mode="bilinear")(image)
    nib.save(nib.Nifti1Image(fine[0].numpy().round().astype(np.int16), fine.affine.numpy()), str(path))
    return list(fine.shape[1:])


def device_augmentation_ms_per_view(augment, views: int = 40) -> float:
    """CPU milliseconds per view of the batched device augmentation (what a CPU-only run pays)."""
    batch = torch.rand(2, views // 4, 2, 1, *PATCH)
    augment(batch)  # warm-up
    t0 = time.perf_counter()
    augment(batch)
    return (time.perf_counter() - t0) / views * 1000


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
    from ctfm.pretraining.cache import preprocess_to_hu
    from scripts.data import ScanPatchPairs

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "abdomen_clinical_grid.nii.gz"
        shape = clinical_size_copy(fetch_sample_ct().abdomen_ct, source)
        cached = Path(tmp) / "scan.npy"
        np.save(cached, preprocess_to_hu(source))
        target = ScanPatchPairs(PATCH, CROPS, bundle_part("train#view_augmentation"))
        target.set_random_state(0)
        cache_rate = pairs_per_second(lambda p: target({"image": str(p)}), [cached] * SCANS)
        baseline_augment = paper_view_augmentation()
        baseline_augment.set_random_state(0)
        base_rate = pairs_per_second(baseline_pipeline(baseline_augment), [source] * SCANS)
        cached_shape = list(np.load(cached, mmap_mode="r").shape)
    device_ms = device_augmentation_ms_per_view(bundle_part("train#device_augmentation"))
    cpu_only_rate = 1.0 / (1.0 / cache_rate + 2 * device_ms / 1000)  # a pair = 2 views
    write_result(
        "pretrain_pipeline",
        figures={"pairs_per_s_per_core_from_cache": round(cache_rate, 2),
                 "device_augmentation_ms_per_view_on_this_cpu": round(device_ms, 2),
                 "pairs_per_s_per_core_with_device_augmentation_on_cpu": round(cpu_only_rate, 2),
                 "patch": list(PATCH), "crops_per_scan": CROPS, "scans_timed": SCANS,
                 "input_shape": shape, "input_spacing_mm": list(CLINICAL_SPACING), "cached_shape_SPL": cached_shape},
        baseline={"pairs_per_s_per_core_on_the_fly_monai": round(base_rate, 2)},
        ratio={"cache_over_on_the_fly": round(cache_rate / base_rate, 2),
               "cpu_only_over_on_the_fly": round(cpu_only_rate / base_rate, 2)},
        notes=f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; one torch thread. Target pipeline = "
              "cache + train#view_augmentation (crop, flip) in the workers; histogram shift and smoothing run batched "
              "on the GPU in training (train#device_augmentation), here timed on this CPU for a CPU-only run.",
    )


if __name__ == "__main__":
    main()
