"""`ctfm embed`: patch-wise aggregation, and a folder never mixes settings."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from ctfm.analysis.patch_embeddings import patch_embeddings

from ._cli import CTFM, ctfm


@pytest.mark.slow
def test_embed_patch_aggregation_is_min_of_window_embeddings(weights, encoder, small_ct, tmp_path):
    from ctfm.transforms import preprocess

    ctfm("embed", "--weights", weights, "--aggregate", "min", "--window", 16, 64, 64, "--overlap", 0,
         "--output-dir", tmp_path / "e", small_ct[0])
    vector = np.load(tmp_path / "e" / "source.npy")
    patches, _ = patch_embeddings(encoder, preprocess(small_ct[0]), (16, 64, 64), (16, 64, 64), progress=False)
    np.testing.assert_allclose(vector, patches.min(0), rtol=1e-4, atol=1e-5)
    out = subprocess.run([*CTFM, "embed", "--weights", str(weights), "--output-dir", str(tmp_path / "e"), str(small_ct[0])],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "new --output-dir" in out.stderr  # never mixes settings in one folder
