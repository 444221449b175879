"""Metric helpers that MONAI does not have: bootstrap confidence intervals."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np

N_BOOTSTRAP = 1000


def bootstrap_ci(
    values: Sequence[float], statistic: Callable = np.mean, n_boot: int = N_BOOTSTRAP, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """``(estimate, low, high)``: the statistic of ``values`` (NaNs dropped) and its percentile bootstrap interval."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    boots = np.array([statistic(v[rng.integers(0, v.size, v.size)]) for _ in range(n_boot)])
    low, high = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return float(statistic(v)), float(low), float(high)


def bootstrap_paired_ci(
    metric: Callable[[np.ndarray, np.ndarray], float],
    y_true: Sequence,
    y_pred: Sequence,
    n_boot: int = N_BOOTSTRAP,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(estimate, low, high)`` of ``metric(y_true, y_pred)``, resampling cases (pairs) with replacement.

    Resamples where the metric is undefined (e.g. AUROC on one class only) are skipped.
    """
    t, p = np.asarray(y_true), np.asarray(y_pred)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(t), len(t))
        try:
            value = metric(t[idx], p[idx])
        except ValueError:
            continue
        if not np.isnan(value):
            boots.append(value)
    if not boots:
        return float(metric(t, p)), float("nan"), float("nan")
    low, high = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return float(metric(t, p)), float(low), float(high)


def macro_mean(values: np.ndarray) -> float:
    """Mean over structures (columns) of each structure's mean over cases (rows); NaNs left out at both steps."""
    values = np.asarray(values, dtype=float)
    with warnings.catch_warnings():  # a structure NaN in every case is expected, not worth a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        per_structure = np.nanmean(values, axis=0) if values.size else np.array([])
    per_structure = per_structure[~np.isnan(per_structure)]
    return float(per_structure.mean()) if per_structure.size else float("nan")


def macro_mean_ci(values: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """:func:`macro_mean` of a cases x structures array with its bootstrap interval, resampling cases."""
    values = np.asarray(values, dtype=float)
    return bootstrap_ci(np.arange(len(values)), statistic=lambda idx: macro_mean(values[idx.astype(int)]), seed=seed)


def in_dataset_order(items: Sequence, world_size: int) -> list:
    """Per-case results of a multi-process evaluation, put back in the dataset's order.

    ``items`` are the ranks' results concatenated rank by rank (what an all-gather returns), each rank
    having evaluated the shard of MONAI's ``DistributedSampler(shuffle=False, even_divisible=False)``:
    rank ``r`` gets cases ``r, r + world_size, r + 2 * world_size, ...``. Back in that order, the report
    (and its bootstrap intervals, which depend on the order) equals a single process's.
    """
    n = len(items)
    order = [i for rank in range(world_size) for i in range(rank, n, world_size)]  # dataset index of each item
    result = [None] * n
    for item, index in zip(items, order):
        result[index] = item
    return result
