"""ct_fm_segmentation without running the network: label data, metrics, the TotalSegmentator converter,
the comparison tool. Fast; the bundle runs are in test_segmentation_bundle.py."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from ctfm.registry import TOTALSEG_NUM_CLASSES, totalsegmentator_classes, totalsegmentator_groups
from ctfm.cli.compare_segmentation import compare_segmentation
from ctfm.cli.convert_totalsegmentator import convert_totalsegmentator
from bundle_runner import BUNDLES, metadata_problems, use_bundle_scripts, verify_metadata

BUNDLE = BUNDLES / "ct_fm_segmentation"
use_bundle_scripts(BUNDLE)  # the bundle's own `scripts` package, as MONAI imports it
from scripts.evaluation import StructureDice, read_per_case, write_report  # noqa: E402

CHANNEL_DEF = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["network_data_format"]["outputs"]["pred"][
    "channel_def"
]
GROUPS = totalsegmentator_groups()


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


# --- TotalSegmentator converter on a look-alike tree built from the real sample CT ---------------
def _totalseg_tree(root: Path, sample_ct, splits=("train", "val", "test")) -> np.ndarray:
    """meta.csv + sXXXX/ct.nii.gz + sXXXX/segmentations/<117 structures>.nii.gz, from a crop of the real CT."""
    ct, label = nib.load(sample_ct.abdomen_ct), nib.load(sample_ct.abdomen_label)
    crop = (slice(30, 70), slice(30, 70), slice(40, 70))
    image, truth = np.asarray(ct.dataobj)[crop].astype(np.int16), np.asarray(label.dataobj)[crop].astype(np.uint8)
    affine = ct.slicer[crop].affine
    root.mkdir()
    lines = ["image_id;age;gender;institute;study_type;split"]
    for n, split in enumerate(splits):
        case = root / f"s{n:04d}"
        (case / "segmentations").mkdir(parents=True)
        nib.save(nib.Nifti1Image(image, affine), case / "ct.nii.gz")
        for idx, name in totalsegmentator_classes().items():
            nib.save(nib.Nifti1Image((truth == idx).astype(np.uint8), affine), case / "segmentations" / f"{name}.nii.gz")
        lines.append(f"s{n:04d};60;m;A;ct abdomen;{split}")
    (root / "meta.csv").write_text("\n".join(lines) + "\n")
    return truth


def test_convert_totalsegmentator_rebuilds_the_label_map_and_the_split(tmp_path, sample_ct):
    truth = _totalseg_tree(tmp_path / "Totalsegmentator_dataset_v201", sample_ct)
    assert len(np.unique(truth)) > 10  # the crop holds real structures
    datalist = convert_totalsegmentator(tmp_path / "Totalsegmentator_dataset_v201", tmp_path / "prepared")
    from monai.data import load_decathlon_datalist

    for split, case in (("training", "s0000"), ("validation", "s0001"), ("testing", "s0002")):
        items = load_decathlon_datalist(datalist, True, split, datalist.parent)
        assert len(items) == 1 and case in items[0]["image"]
        label = nib.load(items[0]["label"])
        np.testing.assert_array_equal(np.asarray(label.dataobj), truth)
        np.testing.assert_allclose(label.affine, nib.load(items[0]["image"]).affine)
    with pytest.raises(FileExistsError, match="already converted"):
        convert_totalsegmentator(tmp_path / "Totalsegmentator_dataset_v201", tmp_path / "prepared")


def test_convert_totalsegmentator_names_a_foreign_structure_file(tmp_path, sample_ct):
    source = tmp_path / "ts"
    _totalseg_tree(source, sample_ct, splits=("train",))
    (source / "s0000" / "segmentations" / "lung_left.nii.gz").write_bytes(
        (source / "s0000" / "segmentations" / "spleen.nii.gz").read_bytes()
    )
    with pytest.raises(ValueError, match="lung_left.nii.gz.*not TotalSegmentator v2"):
        convert_totalsegmentator(source, tmp_path / "out")


# --- Comparison tool -------------------------------------------------------------------------------
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


def test_compare_segmentation_refuses_a_file_that_is_not_an_evaluation(tmp_path):
    bad = tmp_path / "dice_raw.csv"
    bad.write_text("filename,class0\nx,1\n")
    with pytest.raises(ValueError, match="dice_raw.csv: not a per_structure_dice.csv"):
        compare_segmentation(bad, bad, tmp_path / "out")
