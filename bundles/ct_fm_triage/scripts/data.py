"""Datalists of the triage bundle, checked before any work starts: every file exists, every label is 0 or 1."""

from __future__ import annotations

import json
import os
from pathlib import Path

from monai.data import load_decathlon_datalist

from ctfm.io import list_inputs
from ctfm.validation import check_files_exist

LABEL_NAMES = {0: "normal", 1: "abnormal"}


def load_triage_datalist(datalist: str | os.PathLike, dataset_dir: str | os.PathLike, list_key: str) -> list[dict]:
    """``[{"image": absolute path, "label": 0 or 1, "id": case id}, ...]`` of one list of a decathlon-style datalist.

    Paths are relative to ``dataset_dir``. ``id`` is the entry's own ``id`` or else its image path as written.
    """
    path = Path(datalist)
    if not path.is_file():
        raise FileNotFoundError(
            f"datalist {path} does not exist. Give --datalist a decathlon-style JSON with lists of "
            '{"image": path, "label": 0 or 1} (ctfm convert-sinoct / convert-cq500 write one).'
        )
    raw = json.loads(path.read_text())
    if not raw.get(list_key):
        lists = sorted(k for k, v in raw.items() if isinstance(v, list) and v)
        raise ValueError(f"datalist {path} has no entries under {list_key!r}; its non-empty lists are {lists}.")
    ids = [entry.get("id", entry.get("image")) for entry in raw[list_key]]
    items = load_decathlon_datalist(path, is_segmentation=False, data_list_key=list_key, base_dir=dataset_dir)
    bad = [(i, item.get("label")) for i, item in zip(ids, items) if item.get("label") not in (0, 1)]
    if bad:
        shown = ", ".join(f"{i}: {label!r}" for i, label in bad[:5])
        raise ValueError(
            f"datalist {path} [{list_key}]: {len(bad)} entr(ies) without a label 0 (normal) or 1 (abnormal): {shown}. "
            "Triage needs one integer label per scan; write 0 or 1 (bool labels are fine)."
        )
    check_files_exist(items, keys=("image",), where=f"datalist {path} [{list_key}] with dataset_dir {dataset_dir}")
    return [{"image": item["image"], "label": int(item["label"]), "id": str(i)} for i, item in zip(ids, items)]


def inference_items(input: str | os.PathLike | list) -> list[dict]:
    """``[{"image": path, "id": path}, ...]`` for the bundles' ``input`` (:func:`ctfm.io.list_inputs`): a
    NIfTI/NRRD file, a DICOM series folder, a folder of those, or a list of them."""
    return [{**item, "id": item["image"]} for item in list_inputs(input)]
