"""Compare two segmentation evaluations (say CT-FM vs random initialisation) structure by structure.

Reads two ``per_structure_dice.csv`` files written by the ct_fm_segmentation bundle's
``evaluate.json`` (one row per case, one column per structure; NaN = structure absent from both
prediction and truth, left out). Writes, in ``output``:

- ``structures.csv``: each structure's mean Dice under A and B, the difference and its label group;
- ``groups.csv``: the label-group means (:func:`ctfm.registry.label_groups`, the paper's Figure 2f) of A and B side by side, with 95% bootstrap intervals;
- ``comparison.png``: per-structure differences sorted, coloured by group, with A's win rate
  (as the paper's Figure 2d), and the group means side by side (as its Figure 2f).

A "win" is a structure whose mean Dice is higher under A than under B; structures without a Dice
in both evaluations are not counted.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ctfm.io import atomic_path, csv_text, refuse_existing, write_text_atomic
from ctfm.metrics import macro_mean_ci
from ctfm.registry import label_groups as paper_label_groups


def _read(path: Path):
    import numpy as np

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file. Give the per_structure_dice.csv that evaluate.json wrote.")
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    if len(rows) < 2 or rows[0][0] != "case":
        raise ValueError(f"{path}: not a per_structure_dice.csv (first column 'case', one column per structure).")
    return rows[0][1:], np.array([[float(v) for v in r[1:]] for r in rows[1:]])


OUTPUTS = ("structures.csv", "groups.csv", "comparison.png")


def compare_segmentation(a, b, output, name_a="CT-FM", name_b="random init", label_groups=None,
                         overwrite: bool = False) -> dict:
    """Write the comparison (see module docstring) and return its summary.

    ``label_groups``: a JSON file with ``{"groups": {group: [structure, ...]}}``; default the paper's groups.
    An earlier comparison in ``output`` is refused unless ``overwrite``.
    """
    import numpy as np

    a, b, output = Path(a), Path(b), Path(output)
    refuse_existing([output / name for name in OUTPUTS], overwrite)
    names_a, dice_a = _read(a)
    names_b, dice_b = _read(b)
    if names_a != names_b:
        raise ValueError(f"{a} and {b} have different structure columns; compare evaluations of the same label set.")
    groups = json.loads(Path(label_groups).read_text())["groups"] if label_groups else paper_label_groups()
    group_of = {s: g for g, members in groups.items() for s in members}
    with np.errstate(all="ignore"):
        mean_a, mean_b = np.nanmean(dice_a, axis=0), np.nanmean(dice_b, axis=0)
    both = ~np.isnan(mean_a) & ~np.isnan(mean_b)
    wins, losses = int((mean_a > mean_b)[both].sum()), int((mean_a < mean_b)[both].sum())
    win_rate = 100.0 * wins / both.sum() if both.any() else float("nan")

    output.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output / "structures.csv", csv_text(
        ["structure", "group", f"dice_{name_a}", f"dice_{name_b}", "difference"],
        ([s, group_of.get(s, ""), f"{mean_a[i]:.4f}", f"{mean_b[i]:.4f}", f"{mean_a[i] - mean_b[i]:.4f}"]
         for i, s in enumerate(names_a))))

    def group_mean(dice, members):
        # as the bundle's evaluate.json: mean over structures of their mean over cases; CI resampling cases
        sub = dice[:, [names_a.index(m) for m in members if m in names_a]]
        return macro_mean_ci(sub)

    group_rows = {g: (group_mean(dice_a, m), group_mean(dice_b, m)) for g, m in groups.items()}
    write_text_atomic(output / "groups.csv", csv_text(
        ["group", f"{name_a}_mean", f"{name_a}_ci95_low", f"{name_a}_ci95_high",
         f"{name_b}_mean", f"{name_b}_ci95_low", f"{name_b}_ci95_high"],
        ([g, *(f"{v:.4f}" for v in (*ga, *gb))] for g, (ga, gb) in group_rows.items())))
    _plot(output / "comparison.png", names_a, mean_a - mean_b, both, group_of, groups, group_rows, win_rate, name_a, name_b)
    summary = {"structures_compared": int(both.sum()), "wins": wins, "losses": losses, "ties": int(both.sum()) - wins - losses,
               "win_rate_percent": win_rate, "groups": {g: {name_a: ga[0], name_b: gb[0]} for g, (ga, gb) in group_rows.items()}}
    write_text_atomic(output / "summary.json", json.dumps(summary, indent=2))
    return summary


def _plot(path, names, diff, both, group_of, groups, group_rows, win_rate, name_a, name_b) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    colours = {g: plt.get_cmap("tab10")(i) for i, g in enumerate(groups)}
    order = [i for i in np.argsort(-np.nan_to_num(diff, nan=-np.inf)) if both[i]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(16, 5), gridspec_kw={"width_ratios": [3, 1]}, constrained_layout=True)
    left.bar(range(len(order)), [diff[i] for i in order], color=[colours.get(group_of.get(names[i]), "grey") for i in order])
    left.axhline(0, color="black", linewidth=0.8)
    left.set_xticks(range(len(order)), [names[i] for i in order], rotation=90, fontsize=5)
    left.set_ylabel(f"Dice {name_a} - {name_b}")
    left.set_title(f"{name_a} wins on {win_rate:.1f}% of {len(order)} structures")
    left.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()], labels=list(colours), fontsize=8)
    x = np.arange(len(group_rows))
    for k, (label, offset) in enumerate(((name_a, -0.2), (name_b, 0.2))):
        means = np.array([rows[k][0] for rows in group_rows.values()])
        err = np.array([[rows[k][0] - rows[k][1], rows[k][2] - rows[k][0]] for rows in group_rows.values()]).T
        right.bar(x + offset, means, width=0.4, yerr=np.nan_to_num(err), capsize=3, label=label)
    right.set_xticks(x, list(group_rows), rotation=30)
    right.set_ylabel("mean Dice (95% CI)")
    right.set_ylim(0, 1)
    right.legend(fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)

