"""Organ centroid distance (`ctfm ocd`) on phantoms with known labels."""

from __future__ import annotations

import csv
import json
import subprocess

import numpy as np
import pytest

from ._cli import CTFM, SPACING, ctfm


@pytest.mark.slow
def test_ocd_on_phantoms_reports_distance_and_inside_and_resumes(weights, tmp_path):
    from ctfm.data.phantoms import write_body_phantoms

    datalist = write_body_phantoms(tmp_path / "body", num=3, seed=0, spacing=(6.0, 6.0, 6.0), fov="thorax")
    args = ["ocd", "--weights", weights, "--datalist", datalist, *SPACING, "--box", 16, 16, 16, "--stride", 16, 16, 16,
            "--output-dir", tmp_path / "ocd"]
    ctfm(*args)
    rows = list(csv.DictReader(open(tmp_path / "ocd" / "ocd.csv")))
    assert len(rows) == 2
    for r in rows:
        match = np.array([float(r[f"match_{a}_mm"]) for a in "xyz"])
        centroid = np.array([float(r[f"centroid_{a}_mm"]) for a in "xyz"])
        assert float(r["ocd_cm"]) == pytest.approx(np.linalg.norm(match - centroid) / 10, abs=1e-2)
        assert r["inside"] in ("0", "1")
    summary = json.loads((tmp_path / "ocd" / "summary.json").read_text())
    assert summary["n_targets"] == 2 and summary["structure_id"] == 51
    assert summary["ocd_cm_mean"] == pytest.approx(np.mean([float(r["ocd_cm"]) for r in rows]))
    ctfm(*args)  # resumes: nothing is searched twice
    assert len(list(csv.DictReader(open(tmp_path / "ocd" / "ocd.csv")))) == 2
    # Other settings into the same folder would mix rows: refused, naming the values, unless --overwrite.
    other = [*args, "--source-index", 1]
    refused = subprocess.run([*CTFM, *map(str, other)], capture_output=True, text=True, timeout=600)
    assert refused.returncode == 1 and "source: " in refused.stderr and "body_000.nii.gz' there" in refused.stderr
    assert json.loads((tmp_path / "ocd" / "summary.json").read_text()) == summary
    ctfm(*other, "--overwrite")
    assert json.loads((tmp_path / "ocd" / "summary.json").read_text())["source"].endswith("body_001.nii.gz")
    assert {r["target"][-15:] for r in csv.DictReader(open(tmp_path / "ocd" / "ocd.csv"))} == {
        "body_000.nii.gz", "body_002.nii.gz"}  # the earlier rows are gone, not mixed in


def test_the_authors_inside_test_is_lenient_and_reported_beside_the_strict_one():
    """The authors' `match_point in label_indices` on tensors: true when a structure voxel shares one coordinate
    with the match on the same axis."""
    from ctfm.analysis.ocd import inside_lenient

    label = np.zeros((10, 10, 10), np.uint8)
    label[2:4, 2:4, 2:4] = 51
    assert inside_lenient(label, (3, 3, 3), 51)  # inside: both tests agree
    assert inside_lenient(label, (3, 8, 8), 51)  # outside, but on a slice of the structure along axis 0
    assert not inside_lenient(label, (8, 8, 8), 51)  # off every axis' span
    assert not inside_lenient(label, (3, 3, 3), 52)  # another structure, absent


def _sphere_scan(path, centre, size=72):
    """A 1 mm body cube (40 HU in -1000 HU air) with a 'heart' (TotalSegmentator 51) sphere of radius 8 mm."""
    import nibabel as nib

    grid = np.indices((size,) * 3)
    heart = sum((g - c) ** 2 for g, c in zip(grid, centre)) <= 64
    image = np.full((size,) * 3, -1000, np.int16)
    image[4:-4, 4:-4, 4:-4] = 40
    image[heart] = 300
    affine = np.eye(4)
    nib.save(nib.Nifti1Image(image, affine), path / "image.nii.gz")
    nib.save(nib.Nifti1Image(heart.astype(np.uint8) * 51, affine), path / "label.nii.gz")
    return {"image": str(path / "image.nii.gz"), "label": str(path / "label.nii.gz")}


@pytest.mark.slow
def test_ocd_paper_protocol_uses_the_authors_grid_box_and_windows(weights, tmp_path):
    """--protocol paper: 1 mm grid, 64^3 box, stride 24 (overlap 0.625), one crop per window; both inside rates."""
    cases = []
    for name, centre in (("source", (36, 36, 36)), ("target", (30, 40, 44))):
        (tmp_path / name).mkdir()
        cases.append(_sphere_scan(tmp_path / name, centre))
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"testing": cases}))
    ctfm("ocd", "--protocol", "paper", "--weights", weights, "--datalist", datalist, "--output-dir", tmp_path / "ocd")
    summary = json.loads((tmp_path / "ocd" / "summary.json").read_text())
    assert (summary["protocol"], summary["method"]) == ("paper", "windows")
    assert (summary["box"], summary["stride"], summary["spacing"]) == ([64, 64, 64], [24, 24, 24], [1.0, 1.0, 1.0])
    [row] = list(csv.DictReader(open(tmp_path / "ocd" / "ocd.csv")))
    assert int(row["inside_lenient"]) >= int(row["inside"])  # lenient holds wherever strict does
    assert summary["inside_rate_lenient"] == float(row["inside_lenient"])
