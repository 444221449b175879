"""Tumour Dice and average surface distance (mm) per case, with 95% bootstrap intervals, and the
side-by-side table of two runs (CT-FM vs baseline) as in the paper's MSD comparison.

Evaluate one run: every case of the datalist's ``key`` list (default "testing") is matched to the label
map in ``predictions`` whose name is the image's name plus an optional letters-only suffix, anywhere
below the folder (liver_3.nii.gz -> liver_3_ensemble.nii.gz from AutoRunner, liver_3_seg.nii.gz from the
template's infer.py). The tumour is ``label_value`` in both maps (default: the datalist's "tumour_label", which
``ctfm convert-msd`` writes, else 1), so a model trained on background / organ / tumour is scored on the
tumour alone, as the authors scored it; maps must share a grid.

Metrics follow the CT-FM authors' evaluation (their notebooks/tumor-seg-eval/evaluate.ipynb):
  ``dice``    MONAI Dice of the tumour, averaged over the cases whose truth holds tumour (a case with an
              empty truth is left out of the mean, as the authors skip it);
  ``asd_mm``  MONAI's average surface distance with its default ``symmetric=False`` (from the predicted
              surface to the true one), in mm, with the voxel spacing.
Stricter figures are reported beside them, labelled: ``dice_all_cases`` (every case: an empty truth counts
1 when nothing is predicted and 0 otherwise) and ``asd_symmetric_mm`` (both surfaces, pooled).
Empty maps are reported, never hidden:
  tumour in the truth, none predicted   "empty prediction": Dice 0, ASD undefined
  no tumour in the truth, some predicted "empty truth":     Dice 0, ASD undefined (not in the paper's mean)
  neither                                "both empty":       Dice 1, ASD undefined (not in the paper's mean)
Undefined ASDs (MONAI returns inf) are left out of the ASD means and counted in the summary.

Writes ``output_dir``/per_case.csv and summary.json (means, 95% bootstrap intervals, the empty cases).
Compare runs: :func:`compare_runs` (``ctfm evaluate-tumour --compare A B``, once per task; summary.json
files or their folders) makes the table in Markdown.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from monai.data import load_decathlon_datalist
from monai.metrics import DiceMetric, SurfaceDistanceMetric
from monai.networks.utils import one_hot

from ctfm.io import VOLUME_SUFFIXES, csv_text, refuse_existing, write_text_atomic
from ctfm.metrics import N_BOOTSTRAP, bootstrap_ci
from ctfm.validation import check_same_grid, load_volume

SUMMARY, PER_CASE = "summary.json", "per_case.csv"
TRUTH_EMPTY = ("empty truth", "both empty")  # statuses of cases the authors leave out of the Dice mean


# ----------------------------------------------------------------------------------------------
# One run
# ----------------------------------------------------------------------------------------------


def find_prediction(folder: Path, image: str) -> Path | None:
    """The one prediction of ``image`` below ``folder``: same name, optionally ``_<letters>`` before the suffix."""
    stem = Path(image).name.split(".")[0]
    pattern = re.compile(rf"{re.escape(stem)}(_[A-Za-z]+)?({'|'.join(map(re.escape, VOLUME_SUFFIXES))})")
    hits = sorted(p for p in folder.rglob(f"{stem}*") if p.is_file() and pattern.fullmatch(p.name))
    if len(hits) > 1:
        raise ValueError(f"{len(hits)} predictions of {stem} in {folder}: {[str(h) for h in hits]}; keep one.")
    return hits[0] if hits else None


def case_metrics(prediction: Path, label: Path, label_value: int = 1) -> dict:
    """Dice, ASD (mm) and the voxel counts of one case; ``status`` names an empty map."""
    truth_img, pred_img = load_volume(label), load_volume(prediction)
    check_same_grid(truth_img, pred_img, str(label), str(prediction))
    truth, pred = (truth_img == label_value).long(), (pred_img == label_value).long()
    n_truth, n_pred = int(truth.sum()), int(pred.sum())
    y, y_pred = one_hot(truth[None], 2), one_hot(pred[None], 2)
    dice = float(DiceMetric(include_background=False, ignore_empty=False)(y_pred, y))
    status, asd, asd_symmetric = "ok", math.nan, math.nan
    if n_truth and n_pred:
        spacing = [float(s) for s in truth_img.pixdim]
        asd = float(SurfaceDistanceMetric(include_background=False)(y_pred, y, spacing=spacing))
        asd_symmetric = float(SurfaceDistanceMetric(include_background=False, symmetric=True)(y_pred, y, spacing=spacing))
    else:
        status = {(True, False): "empty prediction", (False, True): "empty truth"}.get((bool(n_truth), bool(n_pred)),
                                                                                      "both empty")
    return {"dice": dice, "asd_mm": asd, "asd_symmetric_mm": asd_symmetric, "truth_voxels": n_truth,
            "pred_voxels": n_pred, "status": status}


def evaluate_tumour(
    datalist: str | Path,
    predictions: str | Path,
    output_dir: str | Path,
    dataroot: str | Path | None = None,
    key: str = "testing",
    label_value: int | None = None,
    run_name: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Evaluate one run (see the module docstring); writes and returns the summary."""
    datalist, predictions, output_dir = Path(datalist), Path(predictions), Path(output_dir)
    refuse_existing([output_dir / PER_CASE, output_dir / SUMMARY], overwrite)
    if not predictions.is_dir():
        raise FileNotFoundError(f"{predictions}: no such folder of predicted label maps.")
    cases = load_decathlon_datalist(str(datalist), True, key, str(dataroot or datalist.parent))
    listing = json.loads(datalist.read_text())
    if label_value is None:
        label_value = int(listing.get("tumour_label", 1))
    found = {c["image"]: find_prediction(predictions, c["image"]) for c in cases}
    missing = [Path(image).name for image, p in found.items() if p is None]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(cases)} cases of {datalist} ('{key}') have no prediction in {predictions}: "
            f"{missing[:10]}. Predict them first, or check --predictions and --key."
        )
    rows = []
    for k, case in enumerate(cases, 1):
        row = {"case": Path(case["image"]).name.split(".")[0], **case_metrics(found[case["image"]], Path(case["label"]), label_value)}
        rows.append(row)
        asd = f"{row['asd_mm']:.2f} mm" if math.isfinite(row["asd_mm"]) else "n/a"
        print(f"[{k}/{len(cases)}] {row['case']}: Dice {row['dice']:.3f}  ASD {asd}  {row['status']}", flush=True)
    summary = summarise(rows)
    summary.update(run=run_name or predictions.name, task=listing.get("name", datalist.stem),
                   datalist=str(datalist), predictions=str(predictions), key=key, label_value=label_value)
    write_text_atomic(output_dir / PER_CASE, csv_text(list(rows[0]), rows))
    write_text_atomic(output_dir / SUMMARY, json.dumps(summary, indent=2))  # last: it marks the run as evaluated
    return summary


def summarise(rows: list[dict]) -> dict:
    """Means with 95% bootstrap intervals over cases: the paper's ``dice`` (cases with tumour in the truth) and
    ``asd_mm``, and the stricter ``dice_all_cases`` and ``asd_symmetric_mm`` (ASDs over the cases where defined)."""
    def stat(values):
        finite = [v for v in values if math.isfinite(v)]
        if not finite:  # JSON has no NaN: an undefined mean is null
            return {"mean": None, "ci95": [None, None], "n": 0}
        mean, low, high = bootstrap_ci(finite)
        return {"mean": mean, "ci95": [low, high], "n": len(finite)}

    by_status = {s: [r["case"] for r in rows if r["status"] == s] for s in ("empty prediction", "empty truth", "both empty")}
    return {
        "n_cases": len(rows),
        "cases": [r["case"] for r in rows],
        "dice": stat([r["dice"] for r in rows if r["status"] not in TRUTH_EMPTY]),
        "asd_mm": stat([r["asd_mm"] for r in rows]),
        "dice_all_cases": stat([r["dice"] for r in rows]),
        "asd_symmetric_mm": stat([r.get("asd_symmetric_mm", math.nan) for r in rows]),
        **{s.replace(" ", "_"): cases for s, cases in by_status.items()},
        "method": "the CT-FM authors': MONAI Dice over cases with tumour in the truth, MONAI average surface "
                  "distance (symmetric=False) in mm; also dice_all_cases (empty truths counted) and asd_symmetric_mm; "
                  f"percentile bootstrap, "
                  f"{N_BOOTSTRAP} resamples of cases, seed 0",
    }


# ----------------------------------------------------------------------------------------------
# Two runs side by side
# ----------------------------------------------------------------------------------------------


def read_summary(path: str | Path) -> dict:
    path = Path(path)
    path = path / SUMMARY if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {SUMMARY}; evaluate the run first (ctfm evaluate-tumour --datalist ...).")
    return json.loads(path.read_text())


def format_stat(stat: dict, digits: int) -> str:
    """``mean (low-high)`` of a summary statistic, or ``n/a`` when it is undefined."""
    if stat["n"] == 0:
        return "n/a"
    low, high = stat["ci95"]
    return f"{stat['mean']:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def compare_runs(pairs: list[tuple[str | Path, str | Path]]) -> str:
    """A Markdown table: one row per task, Dice and ASD (95% CI) of run A beside run B."""
    runs = [(read_summary(a), read_summary(b)) for a, b in pairs]
    name_a, name_b = runs[0][0]["run"], runs[0][1]["run"]
    lines = [
        f"| Task | n | Dice {name_a} | Dice {name_b} | ASD mm {name_a} | ASD mm {name_b} | empty predictions A / B |",
        "|---|---|---|---|---|---|---|",
    ]
    for a, b in runs:
        if a["cases"] != b["cases"]:
            raise ValueError(f"{a['task']}: runs {a['run']!r} and {b['run']!r} were evaluated on different cases.")
        lines.append(
            f"| {a['task']} | {a['n_cases']} | {format_stat(a['dice'], 3)} | {format_stat(b['dice'], 3)} | {format_stat(a['asd_mm'], 1)} | "
            f"{format_stat(b['asd_mm'], 1)} | {len(a['empty_prediction'])} / {len(b['empty_prediction'])} |"
        )
    return "\n".join(lines) + "\n"
