"""Writing a converted datalist: one rule for every converter."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ctfm.io import write_text_atomic


def refuse_existing(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """``path``, after checking that no datalist is there (or that ``overwrite`` allows replacing it).

    Converters call this before their long work, so a finished conversion is never redone by accident.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} already exists: this dataset is already converted; nothing was written. "
            "Pass --overwrite to replace it, or choose another output."
        )
    return path


def write_datalist(datalist: dict, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``datalist`` as indented JSON through a temporary file and a rename; returns ``path``."""
    return write_text_atomic(refuse_existing(path, overwrite), json.dumps(datalist, indent=2) + "\n")
