"""Datalists of the triage bundle, checked before any work starts: every file exists, every label is 0 or 1."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ctfm.io import list_inputs
from ctfm.validation import load_datalist

LABEL_NAMES = {0: "normal", 1: "abnormal"}


def load_triage_datalist(datalist: str | os.PathLike, dataset_dir: str | os.PathLike, list_key: str) -> list[dict]:
    """``[{"image": absolute path, "label": 0 or 1, "id": case id}, ...]`` of one list of a decathlon-style datalist.

    Paths are relative to ``dataset_dir``. ``id`` is the entry's own ``id`` or else its image path as written.
    """
    path = Path(datalist)
    items = load_datalist(path, list_key, dataset_dir, keys=("image",), is_segmentation=False)
    entries = json.loads(path.read_text())[list_key]
    ids = [entry.get("id", entry["image"]) if isinstance(entry, dict) else entry for entry in entries]
    bad = [(i, item.get("label")) for i, item in zip(ids, items) if item.get("label") not in (0, 1)]
    if bad:
        shown = ", ".join(f"{i}: {label!r}" for i, label in bad[:5])
        raise ValueError(
            f"datalist {path} [{list_key}]: {len(bad)} entr(ies) without a label 0 (normal) or 1 (abnormal): {shown}. "
            "Triage needs one integer label per scan; write 0 or 1 (bool labels are fine)."
        )
    return [{"image": item["image"], "label": int(item["label"]), "id": str(i)} for i, item in zip(ids, items)]


def inference_items(input: str | os.PathLike | list) -> list[dict]:
    """``[{"image": path, "id": path}, ...]`` for the bundles' ``input`` (:func:`ctfm.io.list_inputs`): a
    NIfTI/NRRD file, a DICOM series folder, a folder of those, or a list of them."""
    return [{**item, "id": item["image"]} for item in list_inputs(input)]
