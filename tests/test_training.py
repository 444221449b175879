"""ctfm.training: the checkpoints a run left behind, newest first, as both training bundles resume from them."""

from __future__ import annotations

from ctfm.training import checkpoints_newest_first, latest_checkpoint


def test_checkpoints_are_ordered_by_number_not_by_name(tmp_path):
    for name in ("checkpoint_epoch=2.pt", "checkpoint_epoch=10.pt", "checkpoint_epoch=9.pt", "model.pt",
                 "checkpoint_epoch=x.pt", "checkpoint_epoch=3.pt.partial", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in checkpoints_newest_first(tmp_path)] == [
        "checkpoint_epoch=10.pt", "checkpoint_epoch=9.pt", "checkpoint_epoch=2.pt"]
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint_epoch=10.pt"


def test_iteration_and_final_checkpoints_of_the_pretraining_bundle(tmp_path):
    for name in ("checkpoint_iteration=500.pt", "checkpoint_iteration=1000.pt", "checkpoint_final_iteration=1000.pt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in checkpoints_newest_first(tmp_path)] == [
        "checkpoint_iteration=1000.pt", "checkpoint_final_iteration=1000.pt", "checkpoint_iteration=500.pt"]


def test_no_checkpoint_is_none(tmp_path):
    assert checkpoints_newest_first(tmp_path) == [] and latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "absent") is None
