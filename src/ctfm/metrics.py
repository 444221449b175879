"""Metric helpers that MONAI does not have: bootstrap confidence intervals."""

from __future__ import annotations

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
