"""The pretraining cache: one CT-FM-preprocessed scan per memory-mappable int16 ``.npy``, in HU.

Written by ``ctfm prepare-pretraining`` (:func:`preprocess_to_hu`, :func:`write_scan_hu` at :func:`cache_file`),
read by the pretraining bundle (:func:`read_scan_hu`): the one definition of the cache format, shared by both.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ctfm.io import atomic_path

SCANS_DIR = "scans"


def preprocess_to_hu(path: str | os.PathLike) -> np.ndarray:
    """A scan as CT-FM pretraining sees it, in HU: ``(S, P, L)`` int16, SPL, 3 x 1 x 1 mm, foreground-cropped.

    Uses the canonical :func:`ctfm.transforms.ct_fm_transforms` (with its input checks), whose last
    step scales -1024..2048 HU to 0..1 with clipping; that scaling is undone exactly here, so the
    cache holds the clipped HU values, rounded to integers.
    """
    from ctfm.registry import HU_MAX, HU_MIN
    from ctfm.transforms import ct_fm_transforms

    scaled = ct_fm_transforms(spacing=(3.0, 1.0, 1.0))({"image": str(path)})["image"]
    hu = np.asarray(scaled[0].detach().cpu().numpy(), dtype=np.float32) * (HU_MAX - HU_MIN) + HU_MIN
    return np.round(hu).astype(np.int16)


def cache_file(output_dir: str | os.PathLike, scan_id: str) -> Path:
    """``scans/<2 hash characters>/<id>.npy``: 256 sub-folders keep 148,000 files browsable."""
    return Path(output_dir) / SCANS_DIR / scan_id[-2:] / f"{scan_id}.npy"


def write_scan_hu(volume: np.ndarray, path: str | os.PathLike) -> Path:
    """Save one cached scan; atomic, so a killed run never leaves half a file under the final name."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, volume)
    return Path(path)


def read_scan_hu(path: str | os.PathLike) -> np.ndarray:
    """A cached ``.npy`` memory-mapped (only what is sliced is read), any other scan preprocessed now."""
    path = Path(path)
    if path.suffix != ".npy":
        return preprocess_to_hu(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: cached scan not found. Check dataset_dir, or rebuild the cache.")
    from ctfm.validation import CTInputError

    try:
        volume = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as err:
        raise CTInputError(
            f"{path}: not a readable .npy ({err}); the file is truncated or corrupt. Delete it and run "
            "ctfm prepare-pretraining again (finished scans are skipped)."
        ) from err
    if volume.ndim != 3 or volume.dtype != np.int16:
        raise CTInputError(f"{path}: expected a 3-D int16 HU array, got {volume.dtype} {volume.shape}; not a CT-FM cache file.")
    return volume
