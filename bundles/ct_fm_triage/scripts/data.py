"""Datalists of the triage bundle, checked before any work starts: every file exists, every label is 0 or 1."""

from __future__ import annotations

import json
import os
from pathlib import Path

from monai.data import load_decathlon_datalist

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


def inference_items(images: str | os.PathLike | list, base_dir: str | os.PathLike = ".") -> list[dict]:
    """``[{"image": path, "id": path as given}, ...]`` for one NIfTI/NRRD file or DICOM series folder, or a list.

    Relative paths are taken from ``base_dir``.
    """
    if images is None:
        raise ValueError("no input: give --image a NIfTI/NRRD file or a DICOM series folder (or a JSON list of them).")
    paths = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    items = [{"image": str(Path(base_dir) / p), "id": str(p)} for p in paths]
    check_files_exist(items, keys=("image",), where="--image")
    return items
