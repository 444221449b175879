"""ctfm.training: the bundles' one resume rule, on real ignite runs checkpointed by MONAI's CheckpointSaver."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader, CheckpointSaver

from ctfm.training import newest_checkpoint, resume_checkpoint

EPOCH_LENGTH = 3


def _train(output_dir, max_epochs: int, resume_from=None) -> list[int]:
    """A tiny ignite run with the bundles' full-state checkpoint (each epoch, the newest kept);
    returns the epochs it ran."""
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=0.1)

    def step(engine, batch):
        optimizer.zero_grad()
        (weight - batch).pow(2).sum().backward()
        optimizer.step()

    trainer = Engine(step)
    state = {"model": torch.nn.ParameterList([weight]), "optimizer": optimizer, "trainer": trainer}
    CheckpointSaver(str(output_dir), state, save_interval=1, n_saved=1, epoch_level=True).attach(trainer)
    if resume_from:
        CheckpointLoader(str(resume_from), state).attach(trainer)
    epochs = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs.append(e.state.epoch))
    trainer.run([1.0] * EPOCH_LENGTH, max_epochs=max_epochs)
    return epochs


def test_a_new_run_starts_and_a_killed_run_continues_where_it_stopped(tmp_path):
    out = tmp_path / "run"
    assert resume_checkpoint(out, resume=True, max_epochs=3) is None  # nothing there yet: a new run
    assert _train(out, max_epochs=2) == [1, 2]  # "killed" after epoch 2 of 3
    start = resume_checkpoint(out, resume=True, max_epochs=3)
    assert start == newest_checkpoint(out) and start.name == "checkpoint_epoch=2.pt"
    assert _train(out, max_epochs=3, resume_from=start) == [3]  # only the missing epoch runs


def test_a_finished_run_and_resume_false_are_refused(tmp_path):
    out = tmp_path / "run"
    _train(out, max_epochs=2)
    with pytest.raises(FileExistsError, match=r"holds a finished run \(checkpoint_epoch=2.pt.*larger --epochs"):
        resume_checkpoint(out, resume=True, max_epochs=2)
    for no in (False, "false"):
        with pytest.raises(FileExistsError, match="already holds a training run.*--resume true"):
            resume_checkpoint(out, resume=no, max_epochs=5)
    with pytest.raises(ValueError, match="true or false"):
        resume_checkpoint(out, resume="yes", max_epochs=5)


def test_a_checkpoint_cut_short_falls_back_to_the_one_before(tmp_path):
    out = tmp_path / "run"
    _train(out, max_epochs=1)
    cut = out / "checkpoint_epoch=2.pt"
    cut.write_bytes((out / "checkpoint_epoch=1.pt").read_bytes()[:200])  # killed while writing
    assert newest_checkpoint(out) == cut
    assert resume_checkpoint(out, resume=True, max_epochs=3) == out / "checkpoint_epoch=1.pt"
    (out / "checkpoint_epoch=1.pt").write_bytes(b"")
    with pytest.raises(RuntimeError, match="none of the checkpoints"):
        resume_checkpoint(out, resume=True, max_epochs=3)


def test_newest_checkpoint_searches_the_whole_output_dir(tmp_path):
    """Each bundle keeps its checkpoints in its own sub-folder (checkpoints/, models/, or output_dir itself)."""
    names = ["checkpoints/checkpoint_iteration=12.pt", "checkpoints/checkpoint_final_iteration=24.pt",
             "models/model.pt", "models/checkpoint_epoch=3.pt"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert newest_checkpoint(tmp_path) == tmp_path / "checkpoints/checkpoint_final_iteration=24.pt"
    assert newest_checkpoint(tmp_path / "models") == tmp_path / "models/checkpoint_epoch=3.pt"
    assert newest_checkpoint(tmp_path / "missing") is None


def test_checkpoints_are_ordered_by_number_not_by_name(tmp_path):
    from ctfm.training import find_checkpoints, newest_checkpoint

    for name in ("checkpoint_epoch=2.pt", "checkpoint_epoch=10.pt", "checkpoint_epoch=9.pt", "model.pt",
                 "checkpoint_epoch=x.pt", "checkpoint_epoch=3.pt.partial", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in find_checkpoints(tmp_path)] == [
        "checkpoint_epoch=10.pt", "checkpoint_epoch=9.pt", "checkpoint_epoch=2.pt"]
    assert newest_checkpoint(tmp_path) == tmp_path / "checkpoint_epoch=10.pt"
    assert newest_checkpoint(tmp_path / "absent") is None
