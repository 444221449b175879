"""``ctfm evaluate-tumour`` (ctfm.evaluation.tumour) on hand-made cases whose Dice and surface distances are
worked out by hand."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ctfm.cli import evaluate_tumour as evaluate_tool
from ctfm.evaluation.tumour import evaluate_tumour, summarise
from tool_runner import run_tool


# --- evaluate-tumour ---------------------------------------------------------------------------

SPACING = (2.0, 1.0, 1.0)  # mm: anisotropic, so a wrong axis order would change the distances


def _save(path: Path, voxels=(), shape=(10, 10, 10), spacing=SPACING) -> None:
    data = np.zeros(shape, np.uint8)
    for v in voxels:
        data[v] = 1
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([*spacing, 1.0])), path)


CUBE = [(i, j, k) for i in range(3, 6) for j in range(3, 6) for k in range(3, 6)]
# case: (truth voxels, predicted voxels, Dice, ASD predicted -> true surface in mm (MONAI's default, the
# authors'), symmetric ASD in mm, status), all worked out by hand.
HAND_MADE = {
    "liver_1": ([(2, 2, 2)], [(5, 2, 2)], 0.0, 6.0, 6.0, "ok"),  # 3 voxels apart along the 2 mm axis
    # predicted (0,0,0) lies on the truth: 0 mm; both ways: distances 0, 0 and 1 mm, pooled
    "liver_2": ([(0, 0, 0), (0, 0, 1)], [(0, 0, 0)], 2 / 3, 0.0, 1 / 3, "ok"),
    "liver_3": (CUBE, CUBE, 1.0, 0.0, 0.0, "ok"),
    "liver_4": (CUBE, [], 0.0, math.nan, math.nan, "empty prediction"),
    "liver_5": ([], [(1, 1, 1)], 0.0, math.nan, math.nan, "empty truth"),
    "liver_6": ([], [], 1.0, math.nan, math.nan, "both empty"),
}


@pytest.fixture
def hand_made(tmp_path) -> tuple[Path, Path]:
    root, preds = tmp_path / "data", tmp_path / "preds"
    testing = []
    for case, (truth, pred, *_) in HAND_MADE.items():
        _save(root / "images" / f"{case}.nii.gz")
        _save(root / "labels" / f"{case}.nii.gz", truth)
        _save(preds / "imagesTr" / f"{case}_ensemble.nii.gz", pred)  # AutoRunner's layout and suffix
        testing.append({"image": f"images/{case}.nii.gz", "label": f"labels/{case}.nii.gz"})
    _save(preds / "liver_10_seg.nii.gz", [(0, 0, 0)])  # another case: must not be taken for liver_1
    (root / "datalist.json").write_text(json.dumps({"name": "hand-made", "training": [], "testing": testing}))
    return root / "datalist.json", preds


def test_dice_and_asd_per_case_match_hand_computed_values(hand_made, tmp_path):
    datalist, preds = hand_made
    summary = evaluate_tumour(datalist, preds, tmp_path / "eval", run_name="A")
    with open(tmp_path / "eval" / "per_case.csv") as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    for case, (_, _, dice, asd, asd_symmetric, status) in HAND_MADE.items():
        assert float(rows[case]["dice"]) == pytest.approx(dice, abs=1e-6), case
        for column, expected in (("asd_mm", asd), ("asd_symmetric_mm", asd_symmetric)):
            value = float(rows[case][column])
            assert (math.isnan(expected) and math.isnan(value)) or value == pytest.approx(expected, abs=1e-6), case
        assert rows[case]["status"] == status
    # The paper's figures: Dice over the cases with tumour in the truth; one-sided ASD.
    assert summary["dice"]["mean"] == pytest.approx((0 + 2 / 3 + 1 + 0) / 4) and summary["dice"]["n"] == 4
    assert summary["asd_mm"]["mean"] == pytest.approx((6 + 0 + 0) / 3) and summary["asd_mm"]["n"] == 3
    # The stricter ones, labelled: every case, and both surfaces.
    assert summary["dice_all_cases"]["mean"] == pytest.approx((0 + 2 / 3 + 1 + 0 + 0 + 1) / 6)
    assert summary["asd_symmetric_mm"]["mean"] == pytest.approx((6 + 1 / 3 + 0) / 3)
    low, high = summary["dice"]["ci95"]
    assert 0 <= low < summary["dice"]["mean"] < high <= 1
    assert summary["empty_prediction"] == ["liver_4"] and summary["empty_truth"] == ["liver_5"]
    assert summary["both_empty"] == ["liver_6"]


def test_a_run_without_any_defined_distance_summarises_to_valid_json():
    rows = [{"case": "liver_4", "dice": 0.0, "asd_mm": math.nan, "status": "empty prediction"}]
    summary = summarise(rows)
    assert summary["asd_mm"] == {"mean": None, "ci95": [None, None], "n": 0}
    assert summary["dice"]["mean"] == 0.0 and summary["empty_prediction"] == ["liver_4"]
    json.dumps(summary, allow_nan=False)  # strict JSON: no NaN


def test_missing_prediction_and_other_grid_are_clear_errors(hand_made, tmp_path):
    datalist, preds = hand_made
    (preds / "imagesTr" / "liver_3_ensemble.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 6 cases .* no prediction .*liver_3"):
        evaluate_tumour(datalist, preds, tmp_path / "e1")
    _save(preds / "imagesTr" / "liver_3_ensemble.nii.gz", CUBE, shape=(10, 10, 12))
    with pytest.raises(ValueError, match="liver_3_ensemble.nii.gz.*is not on the grid of image .*liver_3.nii.gz"):
        evaluate_tumour(datalist, preds, tmp_path / "e2")
    assert not (tmp_path / "e2").exists()  # nothing half-written


def test_side_by_side_table_of_two_runs(hand_made, tmp_path, capsys):
    datalist, preds = hand_made
    evaluate_tumour(datalist, preds, tmp_path / "a", run_name="CT-FM + Auto3DSeg")
    _save(preds / "imagesTr" / "liver_4_ensemble.nii.gz", CUBE)  # run B finds the tumour that A missed
    evaluate_tumour(datalist, preds, tmp_path / "b", run_name="Auto3DSeg")
    with pytest.raises(FileExistsError, match="--overwrite"):
        evaluate_tumour(datalist, preds, tmp_path / "b")
    table_file = tmp_path / "table.md"
    capsys.readouterr()
    argv = ["--compare", str(tmp_path / "a"), str(tmp_path / "b" / "summary.json"), "--table", str(table_file)]
    assert run_tool(evaluate_tool, argv) == 0
    header, _, row = capsys.readouterr().out.strip().splitlines()
    assert "Dice CT-FM + Auto3DSeg" in header and "ASD mm Auto3DSeg" in header
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:2] == ["hand-made", "6"] and cells[-1] == "1 / 0"
    # Dice over the 4 cases with tumour in the truth: A (0 + 2/3 + 1 + 0) / 4, B finds liver_4 (Dice 1)
    assert cells[2].startswith("0.417 (") and cells[3].startswith("0.667 (")
    assert table_file.read_text().splitlines()[2] == row


def test_a_three_class_run_is_scored_on_the_tumour_the_datalist_names(tmp_path):
    """MSD as the authors: trained on background / liver / tumour (convert-msd's default), scored on the tumour
    (label 2, from the datalist) only: a prediction that misses the liver keeps Dice 1, one that calls the
    tumour liver gets Dice 0."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "auto3dseg_algo"))
    from tiny_example import write_msd_like_task

    from ctfm.datasets.msd import convert_msd

    task = write_msd_like_task(tmp_path / "msd", num=3, spacing=(4.0, 4.0, 4.0))
    datalist = convert_msd(task, num_folds=1, test_fraction=0.67)
    testing = json.loads(datalist.read_text())["testing"]
    assert len(testing) == 2
    preds = tmp_path / "preds"
    preds.mkdir()
    for case, rule in zip(testing, ({1: 0}, {2: 1})):  # drop the liver; call the tumour liver
        truth = nib.load(task / case["label"])
        data = np.asarray(truth.dataobj).copy()
        assert (data == 2).any() and (data == 1).any()
        for old, new in rule.items():
            data[data == old] = new
        nib.save(nib.Nifti1Image(data, truth.affine), preds / Path(case["image"]).name)
    summary = evaluate_tumour(datalist, preds, tmp_path / "eval")
    assert summary["label_value"] == 2
    rows = list(csv.DictReader((tmp_path / "eval" / "per_case.csv").open()))
    assert [float(r["dice"]) for r in rows] == [1.0, 0.0]
    assert summary["dice"]["mean"] == pytest.approx(0.5)
