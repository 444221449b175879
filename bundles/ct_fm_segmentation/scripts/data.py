"""Which volumes go in, and what is written next to each label map."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from monai.transforms import MapTransform

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def few_shot(datalist: Sequence[Mapping], num_train: int | None, seed: int = 0) -> list[dict]:
    """``num_train`` training cases picked deterministically (all when ``None`` or 0).

    Cases are sorted by image path and shuffled with ``seed``, and the first ``num_train`` are kept,
    so the subsets are nested: the 5 cases of a 5-shot run are among the 10 of a 10-shot run.
    """
    items = sorted((dict(d) for d in datalist), key=lambda d: str(d["image"]))
    if not num_train:
        return items
    if num_train > len(items):
        raise ValueError(
            f"num_train={num_train} but the datalist has only {len(items)} training cases; "
            f"use num_train <= {len(items)} (or null for all)."
        )
    order = np.random.default_rng(seed).permutation(len(items))
    return [items[i] for i in order[:num_train]]


def _is_volume(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(VOLUME_SUFFIXES)


def list_inputs(path: str | os.PathLike) -> list[dict]:
    """``[{"image": ...}]`` for inference from a file, a DICOM series folder, or a folder of either.

    A folder holding NIfTI/NRRD files gives each file (and each sub-folder, as a DICOM series);
    a folder holding only other files is one DICOM series.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no such file or folder. Set --input to a NIfTI/NRRD file, a DICOM series folder, "
            "or a folder of those."
        )
    if path.is_file():
        return [{"image": str(path)}]
    children = sorted(path.iterdir())
    volumes = [c for c in children if _is_volume(c)] + [c for c in children if c.is_dir()]
    if volumes:
        return [{"image": str(c)} for c in volumes]
    if any(c.is_file() for c in children):
        return [{"image": str(path)}]  # a DICOM series: its files often have no extension
    raise FileNotFoundError(f"{path} is an empty folder: no CT volume or DICOM series to segment.")


class WriteLabelNamesd(MapTransform):
    """Write ``<label map>.json`` next to each saved label map: every id's name and the ids present.

    A label map that was not saved (MONAI Label drops ``SaveImaged`` and writes the result itself) gets none.
    """

    def __init__(self, keys, label_names: Mapping, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.label_names = {str(k): v for k, v in label_names.items()}

    def __call__(self, data):
        for key in self.key_iterator(data):
            if "saved_to" not in data[key].meta:
                continue
            saved = Path(data[key].meta["saved_to"])
            sidecar = saved.with_name(saved.name.split(".")[0] + ".json")
            present = [int(i) for i in np.unique(np.asarray(data[key])) if i > 0]
            sidecar.write_text(
                json.dumps(
                    {
                        "label_map": saved.name,
                        "source": str(data[key].meta.get("filename_or_obj", "")),
                        "labels": self.label_names,
                        "present": {str(i): self.label_names.get(str(i), "?") for i in present},
                    },
                    indent=2,
                )
            )
        return data
