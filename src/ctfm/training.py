"""What every training run shares: finding the checkpoints it left behind, to resume from the newest."""

from __future__ import annotations

import os
import re
from pathlib import Path

# The names MONAI's CheckpointSaver gives (file_prefix "checkpoint"): per epoch, per iteration, and the final one.
CHECKPOINT_NAME = re.compile(r"checkpoint_(?:final_)?(?:epoch|iteration)=(\d+)\.pt")


def checkpoints_newest_first(folder: str | os.PathLike) -> list[Path]:
    """The full-state checkpoints in ``folder``, highest epoch or iteration first (none: an empty list)."""
    found = [(int(m.group(1)), p) for p in Path(folder).glob("checkpoint_*.pt") if (m := CHECKPOINT_NAME.fullmatch(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The newest full-state checkpoint in ``folder``, or ``None`` when there is none."""
    found = checkpoints_newest_first(folder)
    return found[0] if found else None
