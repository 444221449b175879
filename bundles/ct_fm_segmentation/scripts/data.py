"""Few-shot training subsets, and what is written next to each label map."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from monai.transforms import MapTransform


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


def few_shot_validation(
    validation: Sequence[Mapping], num_train: int | None, num_training_cases: int, seed: int = 0
) -> list[dict]:
    """The validation cases of a few-shot run: the same share of the validation set as ``num_train`` is of
    the ``num_training_cases`` training cases, rounded, at least one (all when ``num_train`` is ``None`` or 0).

    The authors' few-shot runs set one ``percentage`` for the training and the validation lists (the paper:
    validation "reweighted according to the training percentage"); the cases are picked as :func:`few_shot`.
    """
    if not num_train:
        return few_shot(validation, None)
    return few_shot(validation, max(1, round(len(validation) * num_train / num_training_cases)), seed)


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
