"""``ctfm convert-totalsegmentator`` (ctfm.datasets.totalsegmentator) on a look-alike tree built from the real
sample CT."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ctfm.datasets.totalsegmentator import convert_totalsegmentator
from ctfm.registry import totalsegmentator_classes


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


def _vista3d_split_file(path: Path, training: dict[str, int], testing: list[str], validation=None) -> Path:
    """A made-up split in the format of VISTA3D's TotalSegmentatorV2_5_folds.json (training with folds, testing)."""
    import json

    listing = {
        "training": [{"image": f"{c}/ct.nii.gz", "pseudo_label": f"{c}/ct.nii.gz", "label": f"{c}/seg.nii.gz", "fold": f}
                     for c, f in training.items()],
        "testing": [{"image": f"{c}/ct.nii.gz", "label": f"{c}/seg.nii.gz"} for c in testing],
        "label_dict": {"1": "spleen"},
    }
    if validation:
        listing["validation"] = [{"image": f"{c}/ct.nii.gz", "label": f"{c}/seg.nii.gz"} for c in validation]
    path.write_text(json.dumps(listing))
    return path


def test_the_vista3d_split_file_gives_the_papers_split_and_is_recorded(tmp_path, sample_ct):
    """meta.csv says train/val/test for s0000..s0004; the VISTA3D file overrides it: s0004 is tested, one of the
    four training cases (52/980 of 4, rounded, at least one) is held out for validation with a fixed seed."""
    import json
    from collections import Counter

    from ctfm.datasets.totalsegmentator import read_vista3d_split

    source = tmp_path / "ts"
    _totalseg_tree(source, sample_ct, splits=("train", "val", "test", "train", "train"))
    split_file = _vista3d_split_file(tmp_path / "TotalSegmentatorV2_5_folds.json",
                                     {"s0000": 0, "s0001": 1, "s0002": 2, "s0003": 3}, ["s0004"])
    datalist = json.loads(convert_totalsegmentator(source, tmp_path / "out", split_file=split_file).read_text())
    assert datalist["split"].startswith("vista3d (TotalSegmentatorV2_5_folds.json")
    parts = {name: sorted(Path(i["image"]).parent.name for i in datalist[name]) for name in ("training", "validation", "testing")}
    assert parts["testing"] == ["s0004"] and len(parts["validation"]) == 1
    assert sorted(parts["training"] + parts["validation"]) == ["s0000", "s0001", "s0002", "s0003"]
    # the paper's counts: 980 training cases -> 928 / 52, the 248 test cases as listed
    cases = {f"s{n:04d}" for n in range(1228)}
    big = _vista3d_split_file(tmp_path / "big.json", {f"s{n:04d}": n % 5 for n in range(980)},
                              [f"s{n:04d}" for n in range(980, 1228)])
    counts = Counter(read_vista3d_split(big, cases).values())
    assert counts == {"training": 928, "validation": 52, "testing": 248}
    assert read_vista3d_split(big, cases) == read_vista3d_split(big, cases)  # seeded: the same draw every time
    # a file with its own validation list is taken as it is
    own = _vista3d_split_file(tmp_path / "own.json", {"s0000": 0, "s0001": 0}, ["s0002"], validation=["s0003", "s0004"])
    assert read_vista3d_split(own, {f"s{n:04d}" for n in range(5)})["s0003"] == "validation"


def test_the_official_split_is_the_default_and_a_mismatched_split_file_is_refused(tmp_path, sample_ct):
    import json

    source = tmp_path / "ts"
    _totalseg_tree(source, sample_ct, splits=("train", "test"))
    assert json.loads(convert_totalsegmentator(source, tmp_path / "a").read_text())["split"] == "official (meta.csv)"
    with pytest.raises(ValueError, match="needs --split-file"):
        convert_totalsegmentator(source, tmp_path / "b", split="vista3d")
    wrong = _vista3d_split_file(tmp_path / "wrong.json", {"s0000": 0, "s0009": 1}, ["s0001"])
    with pytest.raises(ValueError, match=r"wrong.json does not match the dataset.*s0009"):
        convert_totalsegmentator(source, tmp_path / "c", split_file=wrong)
    assert not (tmp_path / "c" / "datalist.json").exists()
