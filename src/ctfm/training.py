"""The bundles' resume rule: which full-state checkpoint a training run continues from, if any.

Every training bundle saves its whole state (network, optimizer, scheduler, ignite trainer) with
MONAI's ``CheckpointSaver`` as ``checkpoint_[final_]epoch=N.pt`` or ``checkpoint_[final_]iteration=N.pt``
somewhere under its ``output_dir``. With ``resume`` (the default) a run started again with the same
``output_dir`` continues from the newest of them; a run that already reached its last epoch is refused,
so its results are never trained over, and ``resume false`` refuses any earlier run.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch

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


def resume_checkpoint(output_dir: str | os.PathLike, resume: bool = True, max_epochs: int | None = None) -> Path | None:
    """The checkpoint a training run in ``output_dir`` starts from; ``None`` for a new run.

    - No checkpoint under ``output_dir``: ``None`` (a new run).
    - ``resume`` false: an earlier run is there, so nothing starts (:class:`FileExistsError`).
    - ``resume`` true: the newest checkpoint that can be read (one cut short by a kill is skipped for the
      one before). If its trainer already ran ``max_epochs`` epochs the run is finished and is refused
      (:class:`FileExistsError`): give a larger ``epochs`` to train it further, or a new ``output_dir``.
    """
    found = find_checkpoints(output_dir)
    if not found:
        return None
    if not _as_bool(resume):
        raise FileExistsError(
            f"output_dir {output_dir} already holds a training run ({found[0].name}); nothing was overwritten. "
            "Continue it with --resume true, or give a new --output_dir."
        )
    for path in found:
        try:  # mmap: only the trainer's few numbers are read, not the weights
            trainer = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["trainer"]
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


def _as_bool(value) -> bool:
    """``true``/``false`` as a bundle override may pass them (JSON bool or text)."""
    if isinstance(value, str):
        if value.strip().lower() not in ("true", "false"):
            raise ValueError(f"resume must be true or false, not {value!r}.")
        return value.strip().lower() == "true"
    return bool(value)
