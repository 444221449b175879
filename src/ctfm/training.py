"""What every training bundle shares: where a run resumes from, and what makes the resume exact.

Every training bundle saves its whole state (network, optimizer, scheduler, ignite trainer, and what else
decides the rest of the run) with :class:`CheckpointSaver` as ``checkpoint_[final_]epoch=N.pt`` or
``checkpoint_[final_]iteration=N.pt`` somewhere under its ``output_dir``. With ``resume`` (the default) a
run started again with the same ``output_dir`` continues from the newest of them; a run that already
reached its last epoch is refused, so its results are never trained over, and ``resume false`` refuses
any earlier run. The run's settings are recorded in ``output_dir/run_settings.json`` on its first start;
a start with other settings is refused (only ``epochs`` may grow), so a resumed run is the run it claims.

A resume is exact (same iteration, learning rate, data order and best-so-far score as a run never
stopped) when the checkpoint holds everything that decides what comes next:

- :class:`CheckpointSaver` writes every file to a temporary name and renames it, so a kill never leaves a
  partial file under a checkpoint's (or ``model.pt``'s) name;
- :class:`BestMetric` carries a validator's best score and its epoch, from which the saver of the best
  model (``save_key_metric``) goes on comparing;
- :class:`RandomStates` carries the random generators an epoch-level run draws its data order and
  augmentations from (iteration-level runs, like pretraining, derive them from the iteration instead).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointSaver as MonaiCheckpointSaver
from monai.transforms import Randomizable, Transform

from ctfm.io import as_bool, atomic_path, write_text_atomic

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = re.compile(r"checkpoint_(?:final_)?(?:epoch|iteration)=(\d+)\.pt")


def find_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The full-state training checkpoints anywhere under ``output_dir``, newest (highest count) first."""
    found = [(int(m.group(1)), p.stat().st_mtime, p) for p in Path(output_dir).rglob("checkpoint_*.pt")
             if (m := CHECKPOINT_NAME.fullmatch(p.name))]
    return [p for *_, p in sorted(found, reverse=True)]


def newest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest full-state training checkpoint under ``output_dir``, or ``None``."""
    found = find_checkpoints(output_dir)
    return found[0] if found else None


def resume_checkpoint(output_dir: str | os.PathLike, resume: bool = True, max_epochs: int | None = None,
                      settings: dict | None = None) -> Path | None:
    """The checkpoint a training run in ``output_dir`` starts from; ``None`` for a new run.

    - No checkpoint under ``output_dir``: ``None`` (a new run).
    - ``resume`` false: an earlier run is there, so nothing starts (:class:`FileExistsError`).
    - ``resume`` true: the newest checkpoint that can be read (one cut short by a kill is skipped for the
      one before). If its trainer already ran ``max_epochs`` epochs the run is finished and is refused
      (:class:`FileExistsError`): give a larger ``epochs`` to train it further, or a new ``output_dir``.
    - ``settings`` (the bundle's hyperparameters, ``run_settings``): recorded on the first start, and
      compared on every later one by :func:`check_run_settings`.
    """
    found = find_checkpoints(output_dir)
    if found and not as_bool(resume, "resume"):
        raise FileExistsError(
            f"output_dir {output_dir} already holds a training run ({found[0].name}); nothing was overwritten. "
            "Continue it with --resume true, or give a new --output_dir."
        )
    if settings is not None:
        check_run_settings(output_dir, settings)
    if not found:
        return None
    for path in found:
        try:
            trainer = _trainer_state(path)
        except Exception as err:  # noqa: BLE001 - a file cut short by a kill: fall back to the one before
            logger.warning("cannot resume from %s (%s: %s); trying an older checkpoint", path, type(err).__name__, err)
            continue
        done = int(trainer["iteration"]) >= int(max_epochs) * int(trainer["epoch_length"]) if max_epochs else False
        if done:
            raise FileExistsError(
                f"output_dir {output_dir} holds a finished run ({path.name}: {trainer['iteration']} iterations, "
                f"{max_epochs} epochs); nothing was overwritten. Give a new --output_dir for a new run, or a larger "
                "--epochs to train this one further."
            )
        logger.info("resuming from %s", path)
        return path
    raise RuntimeError(
        f"none of the checkpoints under {output_dir} ({', '.join(p.name for p in found)}) can be read; "
        "move them away to start over, or give a new --output_dir."
    )


def resumed_iteration(checkpoint: str | os.PathLike | None) -> int:
    """The iteration a run resumed from ``checkpoint`` starts after (0 for a new run): where an
    iteration-level data stream picks up."""
    return int(_trainer_state(checkpoint)["iteration"]) if checkpoint else 0


def _trainer_state(path: str | os.PathLike) -> dict:
    # mmap: only the trainer's few numbers are read, not the weights
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)["trainer"]


# --- The run's settings -----------------------------------------------------------------------------

SETTINGS_FILE = "run_settings.json"
GROWING_SETTINGS = ("epochs",)  # a finished run is trained further by giving it more epochs


def check_run_settings(output_dir: str | os.PathLike, settings: dict) -> None:
    """Record ``settings`` in ``output_dir/run_settings.json`` on a run's first start; on a later start
    into the same ``output_dir``, refuse (:class:`ValueError`) if any differs, listing each as old -> new.

    ``epochs`` may grow (the record is then updated): that is how a finished run is trained further.
    """
    record = Path(output_dir) / SETTINGS_FILE
    now = json.loads(json.dumps(settings))  # tuples -> lists, as the record reads back
    if not record.is_file():
        if find_checkpoints(output_dir):
            logger.warning("%s holds a run without %s (made before runs recorded their settings); "
                           "recording this run's settings now", output_dir, SETTINGS_FILE)
        write_text_atomic(record, json.dumps(now, indent=2) + "\n")
        return
    try:
        before = json.loads(record.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{record} is not valid JSON ({err}); it records the settings of the run in "
                         f"{output_dir}. Restore it, or give a new --output_dir.") from None
    differ = {k: (before.get(k), v) for k, v in now.items() if before.get(k) != v}
    grown = {k for k, (old, new) in differ.items()
             if k in GROWING_SETTINGS and isinstance(old, int) and isinstance(new, int) and new > old}
    refused = {k: v for k, v in differ.items() if k not in grown}
    if refused:
        said = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(refused.items()))
        raise ValueError(
            f"output_dir {output_dir} holds a run made with other settings ({said}; recorded in {record}); "
            "nothing was changed. Give a new --output_dir for a run with these settings, or resume this one "
            "with the recorded settings (only --epochs may grow, to train it further)."
        )
    if grown:
        logger.info("training %s further: %s", output_dir, ", ".join(f"{k} {differ[k][0]} -> {differ[k][1]}" for k in grown))
        write_text_atomic(record, json.dumps({**before, **now}, indent=2) + "\n")


# --- What a checkpoint must hold for an exact resume -------------------------------------------------


class AtomicDiskSaver(DiskSaver):
    """ignite's ``DiskSaver`` writing each file to a temporary name beside it (``.NAME.*.partial.pt``) and
    renaming it: a kill while writing leaves the earlier file, never a partial one under the final name.

    ``filename``: a fixed name (MONAI's ``model.pt``): it is replaced by the next write, never removed
    first, so there is always one. The file gets the permissions the user's umask gives (ignite's own
    ``atomic`` mode makes them owner-only, which is why MONAI turns it off).
    """

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None):
        super().__init__(dirname=dirname, require_empty=False, atomic=False)  # atomic here, through atomic_path
        self.filename = filename

    def __call__(self, checkpoint, filename: str, metadata=None) -> None:
        super().__call__(checkpoint, self.filename or filename, metadata)

    def _save_func(self, checkpoint, path: Path, func) -> None:
        with atomic_path(path) as tmp:
            func(checkpoint, tmp, **self.kwargs)

    def remove(self, filename: str) -> None:
        if self.filename is None:
            super().remove(filename)


class CheckpointSaver(MonaiCheckpointSaver):
    """MONAI's ``CheckpointSaver`` whose files are written whole (:class:`AtomicDiskSaver`), and whose best
    model (``save_key_metric``) survives a resume: at each validation it compares with the validator's
    ``best_metric`` as restored by :class:`BestMetric`, not only with what this process saved.

    The bundles use it for every checkpoint and best model (``"_target_": "ctfm.training.CheckpointSaver"``).
    """

    def __init__(self, save_dir: str, save_dict: dict, key_metric_negative_sign: bool = False, **kwargs):
        super().__init__(save_dir, save_dict, key_metric_negative_sign=key_metric_negative_sign, **kwargs)
        self.key_metric_negative_sign = key_metric_negative_sign
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler = AtomicDiskSaver(self.save_dir, checkpoint.save_handler.filename)
        if self._interval_checkpoint is not None:  # a resumed run keeps n_saved in all, counting the earlier run's
            prefix = self._interval_checkpoint.filename_prefix
            name = re.compile(rf"{re.escape(prefix + '_' if prefix else '')}checkpoint_{self._interval_checkpoint.score_name}=(\d+)\.pt")
            earlier = [(int(m.group(1)), p.name) for p in Path(self.save_dir).glob("*.pt") if (m := name.fullmatch(p.name))]
            self._interval_checkpoint._saved = [Checkpoint.Item(n, name) for n, name in sorted(earlier)]

    def attach(self, engine) -> None:
        super().attach(engine)
        if self._key_metric_checkpoint is not None:
            engine.add_event_handler(Events.STARTED, self._remember_best)

    def _remember_best(self, engine) -> None:
        """Before a validation, the best score so far (restored by a resume) stands for the saved best model."""
        best, epoch = getattr(engine.state, "best_metric", -1), getattr(engine.state, "best_metric_epoch", -1)
        saver = self._key_metric_checkpoint
        if saver._saved or epoch is None or epoch < 0 or saver.save_handler.filename is None:
            return
        priority = (-1 if self.key_metric_negative_sign else 1) * float(best)
        saver._saved.append(Checkpoint.Item(priority, saver.save_handler.filename))


class BestMetric:
    """A validator's best score and its epoch (ignite state ``best_metric``, ``best_metric_epoch``, kept by
    MONAI's workflow), for the full-state checkpoint: after a resume a worse model never replaces the best."""

    def __init__(self, evaluator):
        self.evaluator = evaluator

    def state_dict(self) -> dict:
        state = self.evaluator.state
        return {"best_metric": float(state.best_metric), "best_metric_epoch": int(state.best_metric_epoch)}

    def load_state_dict(self, state: dict) -> None:
        self.evaluator.state.best_metric = float(state["best_metric"])
        self.evaluator.state.best_metric_epoch = int(state["best_metric_epoch"])


class RandomStates:
    """The random generators an epoch's data order and augmentations come from, for the full-state checkpoint.

    torch's (CPU and CUDA), numpy's and Python's global generators (DataLoader shuffling and worker seeds
    are drawn from torch's) and the generator of every random transform in ``transforms`` (they draw in
    the main process when ``num_workers`` is 0). Saved at the end of an epoch and restored when a run
    resumes, the next epoch draws what it would have drawn in a run never stopped.

    Under torchrun only rank 0 saves, so the states are restored in a single process only: a resumed
    multi-process run keeps each rank's own seeding (``seed + rank``), as it would without this.
    """

    def __init__(self, transforms=None):
        self.transforms = _random_transforms(transforms)

    def state_dict(self) -> dict:
        state = {"torch": torch.get_rng_state(), "numpy": _numpy_state(np.random.get_state()),
                 "python": random.getstate(), "transforms": [_numpy_state(t.R.get_state()) for t in self.transforms]}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            logger.info("multi-process run: each rank keeps its own random generators (rank 0's were saved)")
            return
        if len(state["transforms"]) != len(self.transforms):
            raise ValueError(f"the checkpoint holds the random states of {len(state['transforms'])} transforms, this "
                             f"run has {len(self.transforms)}: the training transforms changed since it was saved.")
        torch.set_rng_state(state["torch"])
        np.random.set_state(_from_numpy_state(state["numpy"]))
        random.setstate(_python_state(state["python"]))
        for transform, saved in zip(self.transforms, state["transforms"]):
            transform.R.set_state(_from_numpy_state(saved))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def _random_transforms(obj, seen=None) -> list:
    """Every random transform in ``obj`` and its parts (a Compose's list, RandAffined's RandAffine...)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _random_transforms(item, seen)]
    if not isinstance(obj, (Transform, Randomizable)):
        return []
    found = [obj] if isinstance(obj, Randomizable) else []
    return found + [t for value in vars(obj).values() for t in _random_transforms(value, seen)]


def _numpy_state(state: tuple) -> tuple:
    # numpy's key array as a tensor: checkpoints are read with weights_only=True
    name, keys, pos, has_gauss, cached = state
    return name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)


def _from_numpy_state(state) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return name, keys.numpy().astype(np.uint32), pos, has_gauss, cached


def _python_state(state) -> tuple:
    version, internal, gauss = state
    return version, tuple(internal), gauss
