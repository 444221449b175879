"""``ctfm compare-segmentation`` (ctfm.evaluation.segmentation): win rate and label-group means of two evaluations."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from ctfm.evaluation.segmentation import compare_segmentation
from ctfm.registry import TOTALSEG_NUM_CLASSES, label_groups, totalsegmentator_classes

GROUPS = label_groups()


def _per_structure_csv(path: Path, dice: np.ndarray) -> Path:
    names = [totalsegmentator_classes()[i] for i in range(1, TOTALSEG_NUM_CLASSES + 1)]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", *names])
        w.writerows([[f"case{i}", *row] for i, row in enumerate(dice)])
    return path


def test_compare_segmentation_win_rate_and_group_means(tmp_path):
    base = np.full((3, TOTALSEG_NUM_CLASSES), 0.5)
    better = base.copy()
    better[:, :24] = 0.9  # organs (ids 1-24) better, the rest tied ...
    better[:, 91:117] = 0.4  # ... and ribs (ids 92-117) worse
    better[:, 50], base[:, 50] = np.nan, np.nan  # heart absent everywhere: not compared
    summary = compare_segmentation(_per_structure_csv(tmp_path / "a.csv", better), _per_structure_csv(tmp_path / "b.csv", base),
                                   tmp_path / "cmp")
    assert summary["structures_compared"] == TOTALSEG_NUM_CLASSES - 1
    assert summary["wins"] == 24 and summary["losses"] == 26
    assert summary["win_rate_percent"] == pytest.approx(100 * 24 / 116)
    assert summary["groups"]["organs"]["CT-FM"] == pytest.approx(0.9)
    assert summary["groups"]["ribs"]["random init"] == pytest.approx(0.5)
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 10_000
    rows = list(csv.DictReader(open(tmp_path / "cmp" / "groups.csv")))
    assert [r["group"] for r in rows] == list(GROUPS)
    # A second comparison into the same folder is refused, naming the file and the fix, unless --overwrite.
    with pytest.raises(FileExistsError, match=r"structures.csv \(and 2 more.*--overwrite"):
        compare_segmentation(tmp_path / "b.csv", tmp_path / "a.csv", tmp_path / "cmp")
    assert compare_segmentation(tmp_path / "b.csv", tmp_path / "a.csv", tmp_path / "cmp", overwrite=True)["wins"] == 26


def test_compare_segmentation_refuses_a_file_that_is_not_an_evaluation(tmp_path):
    bad = tmp_path / "dice_raw.csv"
    bad.write_text("filename,class0\nx,1\n")
    with pytest.raises(ValueError, match="dice_raw.csv: not a per_structure_dice.csv"):
        compare_segmentation(bad, bad, tmp_path / "out")
