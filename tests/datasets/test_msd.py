"""``ctfm convert-msd`` (ctfm.datasets.msd) on a tiny look-alike of Task03_Liver (auto3dseg_algo/tiny_example.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ctfm.cli import convert_msd as convert_msd_tool
from ctfm.datasets.msd import DATALIST, LABEL_DIR, convert_msd
from tool_runner import run_tool

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "auto3dseg_algo"))
from tiny_example import MSD_LIVER_LABELS as LIVER_LABELS  # noqa: E402
from tiny_example import write_msd_like_task  # noqa: E402


@pytest.fixture(scope="module")
def liver_task(tmp_path_factory) -> Path:
    return write_msd_like_task(tmp_path_factory.mktemp("msd"), num=6, spacing=(2.0, 2.0, 2.0))


# --- convert-msd -------------------------------------------------------------------------------


def test_convert_keeps_background_organ_and_tumour_by_default_and_names_the_tumour(liver_task, tmp_path):
    """The authors trained on the published classes and scored the tumour: the datalist says which value it is."""
    datalist = json.loads(convert_msd(liver_task, tmp_path / "all", seed=0, num_folds=2, test_fraction=0.34).read_text())
    assert datalist["labels"] == LIVER_LABELS and datalist["class_names"] == ["liver", "cancer"]
    assert datalist["tumour_label"] == 2
    for case in datalist["training"] + datalist["testing"]:
        assert case["label"].startswith("labelsTr/") and (tmp_path / "all" / case["label"]).is_symlink()
        linked = nib.load(tmp_path / "all" / case["label"])
        np.testing.assert_array_equal(np.asarray(linked.dataobj), np.asarray(nib.load(liver_task / case["label"]).dataobj))
    assert not (tmp_path / "all" / LABEL_DIR).exists()


def test_convert_writes_binary_tumour_labels_on_the_same_grid(liver_task):
    datalist = json.loads(convert_msd(liver_task, seed=0, num_folds=2, test_fraction=0.34, labels="tumour").read_text())
    assert datalist["labels"] == {"0": "background", "1": "cancer"} and datalist["tumour_label"] == 1
    cases = datalist["training"] + datalist["testing"]
    assert len(cases) == 6 and len(datalist["testing"]) == 2
    for case in cases:
        original = nib.load(liver_task / "labelsTr" / Path(case["label"]).name)
        tumour = nib.load(liver_task / case["label"])
        assert case["label"].startswith(LABEL_DIR) and (liver_task / case["image"]).is_file()
        np.testing.assert_array_equal(np.asarray(tumour.dataobj), np.asarray(original.dataobj) == 2)
        np.testing.assert_allclose(tumour.affine, original.affine)
        assert tumour.get_data_dtype() == np.uint8
    assert sorted({c["fold"] for c in datalist["training"]}) == [0, 1]


def test_split_is_seeded_and_datalist_never_overwritten(liver_task, tmp_path):
    first = json.loads((liver_task / DATALIST).read_text())
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_msd(liver_task, seed=0)
    again = json.loads(convert_msd(liver_task, tmp_path / "out", seed=0, num_folds=2, test_fraction=0.34).read_text())
    other = json.loads(convert_msd(liver_task, tmp_path / "out2", seed=7, num_folds=2, test_fraction=0.34).read_text())
    assert [c["image"] for c in again["testing"]] == [c["image"] for c in first["testing"]]
    assert [c["image"] for c in other["testing"]] != [c["image"] for c in first["testing"]]
    # Another output folder links the images in, so every path stays inside the dataroot.
    assert all((tmp_path / "out" / c["image"]).is_symlink() for c in again["training"])


def test_convert_refuses_a_task_whose_labels_differ(tmp_path):
    wrong = tmp_path / "Task08_HepaticVessel"  # publishes 2 as "tumour"; these are the liver task's labels
    wrong.mkdir()
    (wrong / "dataset.json").write_text(json.dumps({"labels": LIVER_LABELS, "training": []}))
    with pytest.raises(ValueError, match="label 2 is 'cancer', but Task08_HepaticVessel publishes it as 'tumour'"):
        convert_msd(wrong)
    with pytest.raises(ValueError, match="does not start with a supported MSD task"):
        convert_msd(tmp_path)


def test_convert_msd_cli_resumes_and_reports(liver_task, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["--task-dir", str(liver_task), "--output-dir", str(out), "--num-folds", "2", "--labels", "tumour"]
    assert run_tool(convert_msd_tool, args) == 0
    first = capsys.readouterr().out
    assert first.count("tumour voxels") == 6 and f"dataroot={out}" in first
    (out / DATALIST).unlink()  # as if killed before the datalist: the labels already written are kept
    assert run_tool(convert_msd_tool, args) == 0
    assert capsys.readouterr().out.count(": kept") == 6
