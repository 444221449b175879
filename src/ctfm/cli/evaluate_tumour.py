"""`ctfm evaluate-tumour`: the command line of :mod:`ctfm.evaluation.tumour`."""

from __future__ import annotations

from pathlib import Path

from ctfm.evaluation import tumour
from ctfm.io import write_text_atomic

DESCRIPTION = tumour.__doc__
EXAMPLES = """  ctfm evaluate-tumour --datalist /data/Task06_Lung/datalist_tumour.json \\
      --predictions work_ct_fm/ensemble_output --output-dir eval/lung_ct_fm --run-name "CT-FM + Auto3DSeg"
  ctfm evaluate-tumour --compare eval/lung_ct_fm eval/lung_baseline --compare eval/liver_ct_fm eval/liver_baseline
"""


def add_arguments(parser) -> None:
    parser.add_argument("--datalist", type=Path, help="the datalist with the true labels (e.g. from ctfm convert-msd)")
    parser.add_argument("--dataroot", type=Path, default=None, help="base of the datalist's paths (default: its folder)")
    parser.add_argument("--predictions", type=Path, help="folder of predicted label maps (searched recursively)")
    parser.add_argument("--output-dir", type=Path, help="where per_case.csv and summary.json go")
    parser.add_argument("--key", default="testing", help="datalist list to evaluate (default: testing)")
    parser.add_argument("--label-value", type=int, default=None,
                        help="tumour value in both maps (default: the datalist's tumour_label, else 1)")
    parser.add_argument("--run-name", default=None, help="name of the run in the table (default: the predictions folder)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing summary in --output-dir")
    parser.add_argument("--compare", nargs=2, action="append", metavar=("RUN_A", "RUN_B"),
                        help="summary.json (or its folder) of two runs of one task; repeat per task")
    parser.add_argument("--table", type=Path, default=None, help="also write the comparison table to this file")


def run(args) -> int:
    if args.compare:
        table = tumour.compare_runs(args.compare)
        print(table, end="")
        if args.table:
            write_text_atomic(args.table, table)
        return 0
    if not (args.datalist and args.predictions and args.output_dir):
        raise ValueError("give --datalist, --predictions and --output-dir to evaluate a run, or --compare A B.")
    s = tumour.evaluate_tumour(datalist=args.datalist, predictions=args.predictions, output_dir=args.output_dir,
                               dataroot=args.dataroot, key=args.key, label_value=args.label_value,
                               run_name=args.run_name, overwrite=args.overwrite)
    print(f"{s['run']} on {s['task']} ({s['n_cases']} cases): Dice {tumour.format_stat(s['dice'], 3)}, ASD {tumour.format_stat(s['asd_mm'], 1)} mm; "
          f"empty prediction {len(s['empty_prediction'])}, empty truth {len(s['empty_truth'])}, "
          f"both empty {len(s['both_empty'])} -> {args.output_dir / tumour.SUMMARY}")
    return 0
