"""Evaluation and inference never write over earlier results. (Training's resume rule is the bundles' one,
:func:`ctfm.training.resume_checkpoint`, set in train.json.)"""

from __future__ import annotations

import os
from pathlib import Path

from ctfm.io import refuse_existing


def ensure_new_outputs(output_dir: str | os.PathLike, names: list[str], ckpt_path: str | None = None,
                       overwrite=False) -> None:
    """Refuse to write evaluation or inference results over earlier ones unless ``overwrite``
    (:func:`ctfm.io.refuse_existing`); check that the model exists. Both before any work."""
    if ckpt_path is not None and not Path(ckpt_path).is_file():
        raise FileNotFoundError(
            f"model {ckpt_path} does not exist. Pass --ckpt_path the model.pt of a training run "
            "(<train output_dir>/model.pt), or put a trained model at models/model.pt in the bundle."
        )
    refuse_existing([Path(output_dir) / n for n in names], overwrite, option="--overwrite true")
