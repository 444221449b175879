"""Fixtures of the embedding-tool tests: a CT-FM encoder with random weights (fixed seed), its weights folder,
and a small crop of the real sample CT with a shifted copy.

The encoder has the full CT-FM topology with random weights, so the tests check what holds for any
weights: identical content gives identical embeddings (a shifted and cropped copy is found again),
the fast pooled grid is the per-window grid, an occluded bright object moves the embedding most, a
scan is perfectly stable against itself. Volumes are small (6 mm voxels, crops).
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from ctfm.networks import build_encoder


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return build_encoder().eval()


@pytest.fixture(scope="module")
def weights(encoder, tmp_path_factory):
    from ctfm.weights import save_pretrained

    return save_pretrained(encoder, tmp_path_factory.mktemp("w") / "ct_fm_RANDOM_INIT")


@pytest.fixture(scope="module")
def small_ct(sample_ct, tmp_path_factory):
    """A 48 x 48 x 36-voxel crop (3 mm) of the real abdomen CT, and a copy shifted by 24 mm and cropped."""
    img = nib.load(sample_ct.abdomen_ct)
    data = np.asarray(img.dataobj, dtype=np.int16)
    folder = tmp_path_factory.mktemp("ct")
    crop = (slice(30, 78), slice(20, 68), slice(50, 86))
    nib.save(nib.Nifti1Image(data[crop], img.affine @ np.diag([1, 1, 1, 1.0]) @ _shift(30, 20, 50)), folder / "source.nii.gz")
    shifted = (slice(38, 78), slice(20, 64), slice(50, 86))  # 8 voxels (24 mm) later along i, 4 fewer along j
    nib.save(nib.Nifti1Image(data[shifted], img.affine @ _shift(38, 20, 50)), folder / "target.nii.gz")
    return folder / "source.nii.gz", folder / "target.nii.gz"


def _shift(i, j, k):
    m = np.eye(4)
    m[:3, 3] = [i, j, k]
    return m
