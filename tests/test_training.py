"""ctfm.training: the bundles' one resume rule, on real ignite runs checkpointed by MONAI's CheckpointSaver."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader, CheckpointSaver

from ctfm.training import SETTINGS_FILE, newest_checkpoint, resume_checkpoint

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


# --- Checkpoints written whole, the run's settings, the state an exact resume needs -------------------


def test_a_checkpoint_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """A write cut short (here: torch.save failing halfway) leaves the earlier checkpoint and no file
    under the new name; a partial file left by a kill has a temporary name, which resume ignores."""
    from ctfm.io import user_mode
    from ctfm.training import CheckpointSaver

    weight = torch.nn.Parameter(torch.zeros(1))
    trainer = Engine(lambda engine, batch: None)
    saver = CheckpointSaver(str(tmp_path), {"model": torch.nn.ParameterList([weight]), "trainer": trainer},
                            save_interval=1, n_saved=2, epoch_level=True)
    saver.attach(trainer)
    trainer.run([0] * EPOCH_LENGTH, max_epochs=1)
    assert (tmp_path / "checkpoint_epoch=1.pt").is_file()
    assert (tmp_path / "checkpoint_epoch=1.pt").stat().st_mode & 0o777 == user_mode()  # the umask's, not owner-only

    def cut_short(obj, f, **kwargs):
        Path(f).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", cut_short)
    with pytest.raises(OSError, match="disk full"):
        trainer.run([0] * EPOCH_LENGTH, max_epochs=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=1.pt"]
    (tmp_path / ".checkpoint_epoch=2.pt.abc.partial.pt").write_bytes(b"partial")  # what a kill leaves
    assert resume_checkpoint(tmp_path, resume=True, max_epochs=3) == tmp_path / "checkpoint_epoch=1.pt"


def test_run_settings_are_recorded_and_a_change_is_refused_but_epochs_may_grow(tmp_path):
    settings = {"learning_rate": 1e-4, "epochs": 3, "patch_size": (24, 128, 128), "seed": 0}
    assert resume_checkpoint(tmp_path, True, 3, settings) is None
    assert json.loads((tmp_path / SETTINGS_FILE).read_text())["patch_size"] == [24, 128, 128]
    resume_checkpoint(tmp_path, True, 3, settings)  # the same settings: fine
    with pytest.raises(ValueError, match=r"learning_rate: 0.0001 -> 0.0002; seed: 0 -> 1.*new --output_dir"):
        resume_checkpoint(tmp_path, True, 3, {**settings, "learning_rate": 2e-4, "seed": 1})
    with pytest.raises(ValueError, match="epochs: 3 -> 2"):
        resume_checkpoint(tmp_path, True, 2, {**settings, "epochs": 2})
    resume_checkpoint(tmp_path, True, 5, {**settings, "epochs": 5})  # trained further
    assert json.loads((tmp_path / SETTINGS_FILE).read_text())["epochs"] == 5


def test_best_metric_and_random_states_round_trip_through_a_checkpoint(tmp_path):
    """What the segmentation and triage bundles add to their full-state checkpoint."""
    from monai.transforms import Compose, RandAffined, RandGaussianNoised
    from ignite.engine import State

    from ctfm.training import BestMetric, RandomStates

    evaluator = Engine(lambda engine, batch: None)
    evaluator.state = State(best_metric=0.7, best_metric_epoch=3)
    transforms = Compose([RandAffined("image", prob=1.0, rotate_range=0.3), RandGaussianNoised("image", prob=1.0)])
    states = RandomStates(transforms)
    assert len(states.transforms) >= 4  # Compose, RandAffined, its RandAffine and grid, the noise
    torch.save({"best": BestMetric(evaluator).state_dict(), "random": states.state_dict()}, tmp_path / "c.pt")
    draws = (torch.rand(3), np.random.rand(), [t.R.rand() for t in states.transforms])
    evaluator.state.best_metric, evaluator.state.best_metric_epoch = -1, -1
    saved = torch.load(tmp_path / "c.pt", weights_only=True)
    BestMetric(evaluator).load_state_dict(saved["best"])
    states.load_state_dict(saved["random"])
    assert (evaluator.state.best_metric, evaluator.state.best_metric_epoch) == (0.7, 3)
    again = (torch.rand(3), np.random.rand(), [t.R.rand() for t in states.transforms])
    assert torch.equal(draws[0], again[0]) and draws[1:] == again[1:]


def test_a_resumed_run_keeps_n_saved_checkpoints_in_all(tmp_path):
    from ctfm.training import CheckpointSaver

    def run(max_epochs, resume_from=None):
        weight = torch.nn.Parameter(torch.zeros(1))
        trainer = Engine(lambda engine, batch: None)
        state = {"model": torch.nn.ParameterList([weight]), "trainer": trainer}
        CheckpointSaver(str(tmp_path), state, save_interval=1, n_saved=1, epoch_level=True).attach(trainer)
        if resume_from:
            CheckpointLoader(str(resume_from), state).attach(trainer)
        trainer.run([0] * EPOCH_LENGTH, max_epochs=max_epochs)

    run(2)
    run(4, resume_checkpoint(tmp_path, True, 4))
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["checkpoint_epoch=4.pt"]
