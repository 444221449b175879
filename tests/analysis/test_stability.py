"""Test-retest stability (`ctfm stability`): registration recovers a known motion; a scan is stable against itself."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from ._cli import SPACING, ctfm


@pytest.mark.slow
def test_stability_registers_a_repositioned_rescan(weights, sample_ct, tmp_path):
    """The same patient lying 6 degrees rotated and 15 mm shifted in the scanner: ``--register`` recovers
    that motion, and registered windows are more alike than windows aligned by world coordinates only."""
    img = nib.load(sample_ct.abdomen_ct)
    angle = np.radians(6.0)
    motion = np.eye(4)
    motion[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    motion[:3, 3] = [8.0, -5.0, 12.0]
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.int16), motion @ img.affine), tmp_path / "retest.nii.gz")
    common = [sample_ct.abdomen_ct, tmp_path / "retest.nii.gz", "--weights", weights, *SPACING,
              "--box", 16, 16, 16, "--stride", 16, 16, 16]
    printed = ctfm("stability", *common, "--register", "--output-dir", tmp_path / "registered").stdout
    ctfm("stability", *common, "--output-dir", tmp_path / "world")
    matrix = np.loadtxt(tmp_path / "registered" / "registration.txt")
    np.testing.assert_allclose(matrix[:3, :3], np.linalg.inv(motion)[:3, :3], atol=0.005)
    np.testing.assert_allclose(matrix[:3, 3], np.linalg.inv(motion)[:3, 3], atol=1.0)  # mm
    registered = json.loads((tmp_path / "registered" / "summary.json").read_text())
    world = json.loads((tmp_path / "world" / "summary.json").read_text())
    assert registered["registration"]["rotation_deg"] == pytest.approx(6.0, abs=0.3) and "6." in printed
    assert registered["cosine_mean"] > world["cosine_mean"], (registered, world)


@pytest.mark.slow
def test_stability_is_one_with_itself_and_drops_for_a_perturbed_copy(weights, small_ct, tmp_path):
    source = small_ct[0]
    img = nib.load(source)
    rng = np.random.default_rng(0)
    noisy = np.asarray(img.dataobj, dtype=np.float32) * 1.1 + rng.normal(0, 80, img.shape)
    nib.save(nib.Nifti1Image(noisy.astype(np.int16), img.affine), tmp_path / "noisy.nii.gz")
    common = ["--weights", weights, *SPACING, "--box", 16, 16, 16, "--stride", 16, 16, 16]
    ctfm("stability", source, source, *common, "--output-dir", tmp_path / "self")
    ctfm("stability", source, tmp_path / "noisy.nii.gz", *common, "--output-dir", tmp_path / "noisy")
    same = json.loads((tmp_path / "self" / "summary.json").read_text())
    other = json.loads((tmp_path / "noisy" / "summary.json").read_text())
    assert same["cosine_min"] == pytest.approx(1.0, abs=1e-5) and same["mse_mean"] == pytest.approx(0.0, abs=1e-8)
    assert other["cosine_mean"] < 0.9999 and other["mse_mean"] > 1e-9
    cos_map = nib.load(tmp_path / "noisy" / "cosine.nii.gz")
    assert cos_map.shape == img.shape
    assert (tmp_path / "noisy" / "cosine.png").exists() and (tmp_path / "noisy" / "windows.csv").exists()
