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
