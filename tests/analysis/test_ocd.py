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
