"""Few-shot training subsets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


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
