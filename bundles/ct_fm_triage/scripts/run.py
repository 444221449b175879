"""Run folders: never write over an earlier run; training saves a checkpoint each epoch and resumes from it."""

from __future__ import annotations

import os
from pathlib import Path

from ignite.engine import Engine
from monai.handlers import CheckpointLoader, CheckpointSaver

from ctfm.training import latest_checkpoint


def check_training_dir(output_dir: str | os.PathLike, resume: bool = False) -> Path | None:
    """Refuse an ``output_dir`` that holds a training run unless ``resume``; returns the checkpoint to resume from.

    Called first in ``run``, before anything is built or written.
    """
    out = Path(output_dir)
    latest = latest_checkpoint(out)
    if not resume and (latest or (out / "model.pt").exists()):
        raise FileExistsError(
            f"output_dir {out} already holds a training run ({(latest or out / 'model.pt').name}); nothing was "
            "overwritten. Continue it with --resume true, or give a new --output_dir."
        )
    if resume and latest is None:
        raise FileNotFoundError(
            f"--resume true, but output_dir {out} holds no checkpoint_epoch=N.pt to resume from. "
            "Give the output_dir of the run to continue, or drop --resume."
        )
    return latest


def attach_checkpointing(trainer: Engine, output_dir: str | os.PathLike, resume: bool = False, **objects) -> None:
    """Save ``objects`` (network, optimizer, lr_scheduler) and the trainer's state after every epoch; resume.

    They go into ``checkpoint_epoch=N.pt`` (the newest only). With ``resume`` they are restored from
    it, so a killed run continues with the epoch after the last one it finished.
    """
    state = {**objects, "trainer": trainer}
    CheckpointSaver(save_dir=str(output_dir), save_dict=state, save_interval=1, n_saved=1).attach(trainer)
    if resume:
        CheckpointLoader(load_path=str(check_training_dir(output_dir, resume=True)), load_dict=state).attach(trainer)


def ensure_new_outputs(output_dir: str | os.PathLike, names: list[str], ckpt_file: str | None = None) -> None:
    """Refuse to write evaluation or inference results over earlier ones; check that the model exists."""
    if ckpt_file is not None and not Path(ckpt_file).is_file():
        raise FileNotFoundError(
            f"model {ckpt_file} does not exist. Pass --ckpt_file the model.pt of a training run "
            "(<train output_dir>/model.pt), or put a trained model at models/model.pt in the bundle."
        )
    existing = [n for n in names if (Path(output_dir) / n).exists()]
    if existing:
        raise FileExistsError(
            f"output_dir {output_dir} already holds {', '.join(existing)}; nothing was overwritten. "
            "Give a new --output_dir (the default makes one per run)."
        )
