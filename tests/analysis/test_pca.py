"""PCA concept maps (`ctfm pca`) and the CIELAB colours they use."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from ._cli import SPACING, ctfm


def test_lab_to_rgb_known_colours():
    from ctfm.analysis.pca import lab_to_rgb

    rgb = lab_to_rgb(np.array([[100.0, 0, 0], [0.0, 0, 0], [53.24, 80.09, 67.20]]))
    np.testing.assert_allclose(rgb, [[1, 1, 1], [0, 0, 0], [1, 0, 0]], atol=0.01)


@pytest.mark.slow
def test_pca_writes_a_colour_figure_of_the_expected_size(weights, small_ct, tmp_path):
    ctfm("pca", "--weights", weights, *SPACING, "--box", 16, 16, 16, "--stride", 8, 16, 16, "--output-dir",
         tmp_path / "pca", *small_ct)
    png = np.asarray(Image.open(tmp_path / "pca" / "pca_concepts.png").convert("RGB"))
    assert png.shape == (800, 1200, 3)  # 15 x 10 inches at 80 dpi: two scans, three views each
    assert (np.abs(png[..., 0].astype(int) - png[..., 1]) > 40).any()  # CIELAB colours over the grey CT
    assert nib.load(tmp_path / "pca" / "source_pc1.nii.gz").shape == nib.load(small_ct[0]).shape
