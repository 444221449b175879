"""The output rules of ctfm.io (docs/input_checks.md, "Outputs"): colliding inputs, existing results and the
user's umask. The tools and bundles that use them are tested through their entry points in their own tests
(tests/analysis/test_embeddings.py, test_segmentation_bundle.py, test_triage_bundle.py)."""

from __future__ import annotations

import os
import stat

import pytest

from ctfm.io import atomic_path, check_outputs, input_ids, refuse_existing, source_signature


def test_inputs_whose_results_share_a_name_are_refused_naming_both(tmp_path):
    for name in ("a/series1", "b/series1"):  # two DICOM folders of one name in different parents
        (tmp_path / name).mkdir(parents=True)
    with pytest.raises(ValueError, match=f"{tmp_path / 'a/series1'} and {tmp_path / 'b/series1'} would both write"):
        input_ids([tmp_path / "a/series1", {"image": str(tmp_path / "b/series1")}])
    with pytest.raises(ValueError, match="case1.nii and .*case1.nii.gz would both write the results named 'case1'"):
        input_ids(["x/case1.nii", "x/case1.nii.gz"])
    with pytest.raises(ValueError, match="Case1.nrrd and .*case1.nii.gz"):  # one file on macOS and Windows
        input_ids(["x/Case1.nrrd", "x/case1.nii.gz"])
    assert list(input_ids(["x/case1.nii.gz", "x/case2.nii.gz", "x/dicom"])) == ["case1", "case2", "dicom"]
    assert list(input_ids(["x/case1.nii.gz", f"{os.getcwd()}/x/case1.nii.gz"])) == ["case1"]  # one file, twice


def test_existing_outputs_are_refused_unless_overwrite(tmp_path):
    (tmp_path / "case2_seg.json").write_text("{}")
    planned = {"per_input": ["{id}_seg.nii.gz", "{id}_seg.json"], "per_run": ["summary.csv"]}
    with pytest.raises(FileExistsError, match=r"case2_seg.json already exists; nothing was written.*--overwrite true"):
        check_outputs(["case1.nii.gz", "case2.nii.gz"], tmp_path, **planned, option="--overwrite true")
    for yes in (True, "true", "True"):  # as a bundle override passes it
        ids = check_outputs(["case1.nii.gz", "case2.nii.gz"], tmp_path, **planned, overwrite=yes)
        assert list(ids) == ["case1", "case2"]
    with pytest.raises(ValueError, match="overwrite must be true or false"):
        refuse_existing([tmp_path / "case2_seg.json"], overwrite="yes")
    assert (tmp_path / "case2_seg.json").read_text() == "{}"


def test_a_different_file_under_the_same_name_has_another_signature(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "case1.nii.gz").write_bytes(b"1234")
    first = source_signature(tmp_path / "a" / "case1.nii.gz")
    (tmp_path / "a" / "case1.nii.gz").write_bytes(b"12345")
    assert source_signature(tmp_path / "a" / "case1.nii.gz") != first
    (tmp_path / "a" / "dicom").mkdir()
    (tmp_path / "a" / "dicom" / "1.dcm").write_bytes(b"12")
    (tmp_path / "a" / "dicom" / "2.dcm").write_bytes(b"345")
    assert source_signature(tmp_path / "a" / "dicom")["bytes"] == 5


def test_written_files_and_weight_folders_follow_the_umask(tmp_path):
    from ctfm.networks import build_encoder
    from ctfm.weights import save_pretrained

    old = os.umask(0o027)
    try:
        with atomic_path(tmp_path / "result.csv") as tmp:
            tmp.write_text("x\n")
        folder = save_pretrained(build_encoder(init_filters=2), tmp_path / "weights")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "result.csv").stat().st_mode) == 0o640
    assert stat.S_IMODE(folder.stat().st_mode) == 0o750  # not tempfile's 0o700
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.csv", "weights"]  # no temporary left


@pytest.mark.slow
def test_checkpoint_selection_never_mixes_settings_or_changed_encoders_in_one_table(tmp_path):
    """`ctfm select-checkpoint` resumes a table: a rerun with other settings, or an encoder folder retrained in
    place, is refused before any work (naming the value or the folder) unless overwrite starts the table over."""
    from ctfm.data.phantoms import write_body_phantoms
    from ctfm.io import file_sha256
    from ctfm.networks import build_encoder
    from ctfm.pretraining.select import read_table, select_checkpoints
    from ctfm.weights import save_pretrained

    datalist = write_body_phantoms(tmp_path / "body", num=2, seed=0, spacing=(3.0, 3.0, 3.0), shape=(24, 48, 48))
    encoder = save_pretrained(build_encoder(), tmp_path / "encoders" / "iteration_00000001")
    run = {"encoders": tmp_path / "encoders", "datalist": datalist, "output_dir": tmp_path / "selection",
           "iterations": 1, "patch_size": (16, 32, 32), "inference_roi": (16, 64, 64)}
    table = select_checkpoints(**run)
    rows = read_table(table)
    assert len(rows) == 1 and rows[0]["weights_sha256"] == file_sha256(encoder / "model.safetensors")
    with pytest.raises(ValueError, match="iterations: 1 there, 2 now"):
        select_checkpoints(**{**run, "iterations": 2})
    save_pretrained(build_encoder(), encoder, overwrite=True)  # retrained in place: other weights, same folder
    with pytest.raises(ValueError, match=f"Dice of {encoder} with other weights"):
        select_checkpoints(**run)
    assert read_table(table) == rows
    select_checkpoints(**run, overwrite=True)
    assert [r["weights_sha256"] for r in read_table(table)] == [file_sha256(encoder / "model.safetensors")]
