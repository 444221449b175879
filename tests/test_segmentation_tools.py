"""ct_fm_segmentation without running the network: label data and metrics. Fast; the bundle runs are in
test_segmentation_bundle.py, the TotalSegmentator converter in datasets/, the comparison tool in evaluation/."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ctfm.registry import TOTALSEG_NUM_CLASSES, label_groups, totalsegmentator_classes
from bundle_runner import BUNDLES, metadata_problems, use_bundle_scripts, verify_metadata

BUNDLE = BUNDLES / "ct_fm_segmentation"
use_bundle_scripts(BUNDLE)  # the bundle's own `scripts` package, as MONAI imports it
from scripts.evaluation import StructureDice, read_per_case, write_report  # noqa: E402

CHANNEL_DEF = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["network_data_format"]["outputs"]["pred"][
    "channel_def"
]
GROUPS = label_groups()


def test_channel_def_is_the_totalsegmentator_class_map():
    assert CHANNEL_DEF == {"0": "background", **{str(k): v for k, v in totalsegmentator_classes().items()}}


def test_label_groups_partition_the_117_structures():
    members = [name for group in GROUPS.values() for name in group]
    assert sorted(GROUPS) == ["cardiac", "muscles", "organs", "ribs", "vertebrae"]
    assert len(members) == len(set(members)) == TOTALSEG_NUM_CLASSES
    assert set(members) == set(totalsegmentator_classes().values())


def test_metadata_has_what_monai_requires():
    assert metadata_problems(BUNDLE) == []


def test_metadata_passes_the_offline_schema(tmp_path):
    proc = verify_metadata(BUNDLE, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "metadata is verified with no error" in proc.stdout + proc.stderr


def _case(shape=(4, 4, 4)):
    return torch.zeros(1, 1, *shape), torch.zeros(1, 1, *shape)


def test_structure_dice_on_hand_made_cases():
    pred, truth = _case()
    truth[0, 0, :2] = 1  # 32 voxels of structure 1 ...
    pred[0, 0, :1] = 1  # ... 16 of them predicted: Dice 2*16/(16+32)
    pred[0, 0, 3, 0, 0] = 2  # structure 2 predicted but absent: a false positive, Dice 0
    truth[0, 0, 3, 3, 3] = 3  # structure 3 present but missed: Dice 0
    dice = StructureDice(num_classes=5)(pred, truth)[0]  # structure 4 absent from both: NaN
    assert dice[:3].tolist() == pytest.approx([2 * 16 / 48, 0.0, 0.0])
    assert torch.isnan(dice[3])
    perfect = StructureDice(num_classes=5)(truth, truth)[0]
    assert perfect[[0, 2]].tolist() == [1.0, 1.0] and torch.isnan(perfect[[1, 3]]).all()


def _raw_csv(path: Path, rows: list[list[float]]) -> Path:
    """A MONAI MetricsSaver dice_raw.csv with 117 structure columns."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", *(f"class{i}" for i in range(TOTALSEG_NUM_CLASSES)), "mean"])
        for i, row in enumerate(rows):
            w.writerow([f"case{i}", *row, np.nanmean(row)])
    return path


def test_report_macro_and_group_means_skip_structures_absent_from_both(tmp_path):
    nan = float("nan")
    rows = [[nan] * TOTALSEG_NUM_CLASSES for _ in range(2)]
    rows[0][0], rows[1][0] = 0.8, 0.6  # spleen (organs) in both cases: mean 0.7
    rows[0][91], rows[1][91] = 1.0, nan  # rib_left_1 (ribs) only in case 0: mean 1.0
    summary = write_report(_raw_csv(tmp_path / "dice_raw.csv", rows), tmp_path, CHANNEL_DEF, GROUPS)
    assert summary["macro_mean_dice"]["mean"] == pytest.approx((0.7 + 1.0) / 2)
    assert summary["groups"]["organs"]["mean"] == pytest.approx(0.7)
    assert summary["groups"]["ribs"]["mean"] == pytest.approx(1.0)
    assert np.isnan(summary["groups"]["cardiac"]["mean"])
    assert summary["absent_from_both"] == 2 * TOTALSEG_NUM_CLASSES - 3
    low, high = summary["macro_mean_dice"]["ci_low"], summary["macro_mean_dice"]["ci_high"]
    assert low <= summary["macro_mean_dice"]["mean"] <= high
    cases, names, dice = read_per_case(tmp_path / "per_structure_dice.csv")
    assert cases == ["case0", "case1"] and names[0] == "spleen" and names[91] == "rib_left_1"
    assert dice[0, 0] == pytest.approx(0.8) and np.isnan(dice[1, 91])
