"""Per-structure Dice for every case, and the report: macro mean, label-group means, 95% bootstrap CIs.

A structure absent from both the prediction and the truth of a case has no Dice there: it is NaN
and left out of every mean (counting it as 1 would reward the model for structures outside the
field of view; as 0, punish it for them). A structure predicted but absent from the truth scores 0
(a false positive), and one in the truth but not predicted scores 0 (a miss).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from monai.metrics import DiceMetric

from ctfm.io import csv_text, write_text_atomic
from ctfm.metrics import bootstrap_ci, in_dataset_order, macro_mean_ci

PER_CASE_CSV = "per_structure_dice.csv"
SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"


class StructureDice(DiceMetric):
    """``DiceMetric`` on label maps (argmax prediction, label ids), background excluded, NaN where a
    structure is absent from both prediction and truth (see the module docstring)."""

    def __init__(self, num_classes: int, **kwargs):
        super().__init__(include_background=False, num_classes=num_classes, ignore_empty=False, **kwargs)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        dice = super()._compute_tensor(y_pred, y)  # (B, num_classes - 1); 1.0 where both are empty
        ids = torch.arange(1, self.num_classes, device=y.device)
        present = torch.stack(
            [torch.isin(ids, torch.unique(p)) | torch.isin(ids, torch.unique(t)) for p, t in zip(y_pred, y)]
        )
        return torch.where(present, dice, torch.full_like(dice, float("nan")))


def read_per_case(path: str | os.PathLike) -> tuple[list[str], list[str], np.ndarray]:
    """``(cases, structures, dice[case, structure])`` from a per-structure CSV (ours or MONAI's ``*_raw.csv``)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], [r for r in rows[1:] if r]
    keep = [i for i, name in enumerate(header) if i > 0 and name != "mean"]
    values = np.array([[float(r[i]) for i in keep] for r in body], dtype=float).reshape(len(body), len(keep))
    return [r[0] for r in body], [header[i] for i in keep], values


def _ci_over_cases(dice: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Macro mean with a 95% percentile-bootstrap interval, resampling cases."""
    return macro_mean_ci(dice, seed=seed)


def write_report(
    raw_csv: str | os.PathLike,
    output_dir: str | os.PathLike,
    label_names: Mapping,
    label_groups: Mapping[str, list[str]],
    world_size: int = 1,
) -> dict:
    """Turn MONAI ``MetricsSaver``'s ``dice_raw.csv`` into the evaluation report; returns the summary.

    Writes ``per_structure_dice.csv`` (one row per case, one column per structure name, NaN = absent
    from both), ``summary.csv`` (per structure and per group: mean, 95% CI, cases counted, cases
    absent from both) and ``summary.json`` (macro mean and group means with CIs).

    ``world_size`` > 1 (multi_gpu_evaluate.json): the CSV holds the ranks' cases rank by rank; they are put
    back in the dataset's order first, so the report equals a single process's.
    """
    cases, _, dice = read_per_case(raw_csv)
    if world_size > 1:
        cases, dice = in_dataset_order(cases, world_size), np.array(in_dataset_order(list(dice), world_size))
    names = [label_names[str(i)] for i in range(1, dice.shape[1] + 1)]
    out = Path(output_dir)
    write_text_atomic(out / PER_CASE_CSV, csv_text(
        ["case", *names], ([case, *(f"{v:.4f}" for v in row)] for case, row in zip(cases, dice))))

    column = {name: i for i, name in enumerate(names)}
    rows = [("structure", name, *bootstrap_ci(dice[:, i]), int((~np.isnan(dice[:, i])).sum())) for name, i in column.items()]
    groups = {}
    for group, members in label_groups.items():
        sub = dice[:, [column[m] for m in members]]
        groups[group] = dict(zip(("mean", "ci_low", "ci_high"), _ci_over_cases(sub)))
        rows.append(("group", group, *groups[group].values(), int((~np.isnan(sub)).any(axis=1).sum())))
    overall = dict(zip(("mean", "ci_low", "ci_high"), _ci_over_cases(dice)))
    rows.append(("all", "macro_mean", *overall.values(), len(cases)))
    write_text_atomic(out / SUMMARY_CSV, csv_text(
        ["level", "name", "dice_mean", "ci95_low", "ci95_high", "cases_counted"],
        ([*r[:2], *(f"{v:.4f}" for v in r[2:5]), r[5]] for r in rows)))
    summary = {
        "cases": len(cases),
        "macro_mean_dice": overall,
        "groups": groups,
        "absent_from_both": int(np.isnan(dice).sum()),
        "absent_rule": "a structure absent from both prediction and truth is NaN and left out of every mean",
        "per_case_csv": PER_CASE_CSV,
    }
    write_text_atomic(out / SUMMARY_JSON, json.dumps(summary, indent=2))
    return summary
