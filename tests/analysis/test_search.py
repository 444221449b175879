"""Semantic search (`ctfm search`): a point is found again in a shifted, cropped copy, by both methods."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from ._cli import SPACING, ctfm


@pytest.mark.slow
def test_search_finds_the_point_in_a_shifted_cropped_copy_and_fast_agrees(weights, small_ct, tmp_path):
    source, target = small_ct
    point = [24, 20, 18]  # voxel of source.nii.gz, inside the body
    world = nib.load(source).affine @ [*point, 1]
    results = {}
    for method in ("windows", "pooled"):
        ctfm("search", "--weights", weights, "--source", source, "--point", *point, *SPACING, "--box", 16, 16, 16,
             "--stride", 8, 8, 8, "--method", method, "--output-dir", tmp_path / method, target, source)
        rows = {r["target"]: r for r in csv.DictReader(open(tmp_path / method / "matches.csv"))}
        results[method] = rows
        for path, row in rows.items():
            found = np.array([float(row[f"world_{a}_mm"]) for a in "xyz"])
            # within one window stride (8 voxels of 6 mm) of the query point, in world mm
            assert np.abs(found - world[:3]).max() <= 8 * 6, (method, path, found, world)
        heat = nib.load(tmp_path / method / "target_similarity.nii.gz")
        assert heat.shape == nib.load(target).shape and np.allclose(heat.affine, nib.load(target).affine)
        png = np.asarray(Image.open(tmp_path / method / "target_similarity.png").convert("RGB"))
        assert png.shape[1] > 900 and (np.abs(png[..., 0].astype(int) - png[..., 2]) > 40).any()
    # searching the source itself: the fast and the per-window search agree within one stride (the query box is
    # centred on the point, the windows start on the grid; random weights rank close neighbours arbitrarily)
    same = [np.array([float(results[m][str(source)][f"world_{a}_mm"]) for a in "xyz"]) for m in ("windows", "pooled")]
    assert np.abs(same[0] - same[1]).max() <= 8 * 6
