"""Tumour Dice and average surface distance (mm) per case, with 95% bootstrap intervals, and the
side-by-side table of two runs (CT-FM vs baseline) as in the paper's MSD comparison.

Evaluate one run: every case of the datalist's --key list (default "testing") is matched to the label
map in --predictions whose name is the image's name plus an optional letters-only suffix, anywhere
below the folder (liver_3.nii.gz -> liver_3_ensemble.nii.gz from AutoRunner, liver_3_seg.nii.gz from the
template's infer.py). The tumour is --label-value (default 1) in both maps; maps must share a grid.

Metrics are MONAI's: DiceMetric, and SurfaceDistanceMetric(symmetric=True) with the voxel spacing, i.e.
the mean over the surface points of both maps of the distance to the other map's surface, in mm.
Empty maps are reported, never hidden:
  tumour in the truth, none predicted   "empty prediction": Dice 0, ASD undefined
  no tumour in the truth, some predicted "empty truth":     Dice 0, ASD undefined
  neither                                "both empty":       Dice 1, ASD undefined
Undefined ASDs (MONAI returns inf) are left out of the ASD mean and counted in the summary.

Writes --output-dir/per_case.csv and summary.json (means, 95% bootstrap intervals, the empty cases).
Compare runs: --compare A B (once per task; summary.json files or their folders) prints the table in
Markdown, and writes it to --table when given.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

from monai.data import load_decathlon_datalist
from monai.metrics import DiceMetric, SurfaceDistanceMetric
from monai.networks.utils import one_hot

from ctfm.metrics import N_BOOTSTRAP, bootstrap_ci
from ctfm.validation import check_same_grid, load_volume

DESCRIPTION = __doc__
EXAMPLES = """  ctfm evaluate-tumour --datalist /data/Task06_Lung/datalist_tumour.json \\
      --predictions work_ct_fm/ensemble_output --output-dir eval/lung_ct_fm --run-name "CT-FM + Auto3DSeg"
  ctfm evaluate-tumour --compare eval/lung_ct_fm eval/lung_baseline --compare eval/liver_ct_fm eval/liver_baseline
"""
SUMMARY, PER_CASE = "summary.json", "per_case.csv"
PREDICTION_SUFFIXES = (".nii.gz", ".nii", ".nrrd")


# ----------------------------------------------------------------------------------------------
# One run
# ----------------------------------------------------------------------------------------------


def find_prediction(folder: Path, image: str) -> Path | None:
    """The one prediction of ``image`` below ``folder``: same name, optionally ``_<letters>`` before the suffix."""
    stem = Path(image).name.split(".")[0]
    pattern = re.compile(rf"{re.escape(stem)}(_[A-Za-z]+)?({'|'.join(map(re.escape, PREDICTION_SUFFIXES))})")
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
    status, asd = "ok", math.nan
    if n_truth and n_pred:
        spacing = [float(s) for s in truth_img.pixdim]
        asd = float(SurfaceDistanceMetric(include_background=False, symmetric=True)(y_pred, y, spacing=spacing))
    else:
        status = {(True, False): "empty prediction", (False, True): "empty truth"}.get((bool(n_truth), bool(n_pred)),
                                                                                      "both empty")
    return {"dice": dice, "asd_mm": asd, "truth_voxels": n_truth, "pred_voxels": n_pred, "status": status}


def evaluate_tumour(
    datalist: str | Path,
    predictions: str | Path,
    output_dir: str | Path,
    dataroot: str | Path | None = None,
    key: str = "testing",
    label_value: int = 1,
    run_name: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Evaluate one run (see the module docstring); writes and returns the summary."""
    datalist, predictions, output_dir = Path(datalist), Path(predictions), Path(output_dir)
    if (output_dir / SUMMARY).exists() and not overwrite:
        raise FileExistsError(f"{output_dir / SUMMARY} already exists; choose another --output-dir or pass --overwrite.")
    if not predictions.is_dir():
        raise FileNotFoundError(f"{predictions}: no such folder of predicted label maps.")
    cases = load_decathlon_datalist(str(datalist), True, key, str(dataroot or datalist.parent))
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
    summary.update(run=run_name or predictions.name, task=json.loads(datalist.read_text()).get("name", datalist.stem),
                   datalist=str(datalist), predictions=str(predictions), key=key, label_value=label_value)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / PER_CASE, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (output_dir / SUMMARY).write_text(json.dumps(summary, indent=2))
    return summary


def summarise(rows: list[dict]) -> dict:
    """Means with 95% bootstrap intervals over cases (ASD over the cases where it is defined)."""
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
        "dice": stat([r["dice"] for r in rows]),
        "asd_mm": stat([r["asd_mm"] for r in rows]),
        **{s.replace(" ", "_"): cases for s, cases in by_status.items()},
        "method": f"MONAI DiceMetric; SurfaceDistanceMetric(symmetric=True) in mm; percentile bootstrap, "
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


def _cell(stat: dict, digits: int) -> str:
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
            f"| {a['task']} | {a['n_cases']} | {_cell(a['dice'], 3)} | {_cell(b['dice'], 3)} | {_cell(a['asd_mm'], 1)} | "
            f"{_cell(b['asd_mm'], 1)} | {len(a['empty_prediction'])} / {len(b['empty_prediction'])} |"
        )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def add_arguments(parser) -> None:
    parser.add_argument("--datalist", type=Path, help="the datalist with the true labels (e.g. from ctfm convert-msd)")
    parser.add_argument("--dataroot", type=Path, default=None, help="base of the datalist's paths (default: its folder)")
    parser.add_argument("--predictions", type=Path, help="folder of predicted label maps (searched recursively)")
    parser.add_argument("--output-dir", type=Path, help="where per_case.csv and summary.json go")
    parser.add_argument("--key", default="testing", help="datalist list to evaluate (default: testing)")
    parser.add_argument("--label-value", type=int, default=1, help="tumour value in both maps (default: 1)")
    parser.add_argument("--run-name", default=None, help="name of the run in the table (default: the predictions folder)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing summary in --output-dir")
    parser.add_argument("--compare", nargs=2, action="append", metavar=("RUN_A", "RUN_B"),
                        help="summary.json (or its folder) of two runs of one task; repeat per task")
    parser.add_argument("--table", type=Path, default=None, help="also write the comparison table to this file")


def run(args) -> int:
    if args.compare:
        table = compare_runs(args.compare)
        print(table, end="")
        if args.table:
            args.table.write_text(table)
        return 0
    if not (args.datalist and args.predictions and args.output_dir):
        raise ValueError("give --datalist, --predictions and --output-dir to evaluate a run, or --compare A B.")
    s = evaluate_tumour(datalist=args.datalist, predictions=args.predictions, output_dir=args.output_dir,
                        dataroot=args.dataroot, key=args.key, label_value=args.label_value, run_name=args.run_name,
                        overwrite=args.overwrite)
    print(f"{s['run']} on {s['task']} ({s['n_cases']} cases): Dice {_cell(s['dice'], 3)}, ASD {_cell(s['asd_mm'], 1)} mm; "
          f"empty prediction {len(s['empty_prediction'])}, empty truth {len(s['empty_truth'])}, "
          f"both empty {len(s['both_empty'])} -> {args.output_dir / SUMMARY}")
    return 0
