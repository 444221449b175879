"""Few-shot training subsets, and what is written next to each label map."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from monai.transforms import MapTransform, SaveImaged

from ctfm.io import atomic_path, scan_id, strip_volume_suffix, write_text_atomic


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


class AtomicSaveImaged(SaveImaged):
    """MONAI's ``SaveImaged``, with two rules of the project's outputs: each label map is named
    ``<scan id>_<postfix><ext>`` (:func:`ctfm.io.scan_id`, the name the overwrite check looked for), and it
    is written under a temporary name in its folder and renamed, so a kill never leaves a partial label map
    under the final name. The final path goes to the map's ``saved_to`` metadata.

    A subclass, so MONAI Label, which drops ``SaveImaged`` and writes the result itself, drops it too.
    """

    def __call__(self, data):
        d = dict(data)
        layout, ext = self.saver.folder_layout, self.saver.output_ext
        for key in self.key_iterator(d):
            source = d[key].meta["filename_or_obj"]
            final = Path(layout.output_dir) / f"{scan_id(source)}_{layout.postfix}{ext}"
            with atomic_path(final) as tmp:
                self.saver(img=d[key], filename=str(tmp)[: -len(ext)])  # SaveImage appends ext
            d[key].meta["saved_to"] = str(final)
        return d


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
            present = [int(i) for i in np.unique(np.asarray(data[key])) if i > 0]
            write_text_atomic(
                saved.with_name(strip_volume_suffix(saved.name) + ".json"),
                json.dumps(
                    {
                        "label_map": saved.name,
                        "source": str(data[key].meta.get("filename_or_obj", "")),
                        "labels": self.label_names,
                        "present": {str(i): self.label_names.get(str(i), "?") for i in present},
                    },
                    indent=2,
                ),
            )
        return data
