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

