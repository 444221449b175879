"""`ctfm convert-msd`: the command line of :mod:`ctfm.datasets.msd`."""

from __future__ import annotations

import json
from pathlib import Path

from ctfm.datasets import msd

DESCRIPTION = msd.__doc__
EXAMPLES = """  ctfm convert-msd --task-dir /data/Task07_Pancreas
  ctfm convert-msd --task-dir /data/Task06_Lung --labels tumour
  ctfm convert-msd --task-dir /data/Task03_Liver --output-dir /data/msd_liver_tumour --seed 1 --num-folds 5
"""


def add_arguments(parser) -> None:
    parser.add_argument("--task-dir", type=Path, required=True, help="the unpacked MSD folder, e.g. /data/Task06_Lung")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="where labels and datalist go (default: the task folder; the dataroot for AutoRunner)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default: 0)")
    parser.add_argument("--num-folds", type=int, default=5, help="cross-validation folds of the training cases (default: 5)")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="share of cases held out as 'testing' (default: 0.2)")
    parser.add_argument("--labels", choices=msd.LABEL_CHOICES, default="all",
                        help="all: background / organ / tumour as published, as the CT-FM authors trained (default); "
                        "tumour: binary tumour maps")
    parser.add_argument("--overwrite", action="store_true", help="write the datalist again if it exists")


def run(args) -> int:
    path = msd.convert_msd(task_dir=args.task_dir, output_dir=args.output_dir, seed=args.seed,
                           num_folds=args.num_folds, test_fraction=args.test_fraction, overwrite=args.overwrite,
                           labels=args.labels)
    datalist = json.loads(path.read_text())
    print(f"{len(datalist['training'])} training ({args.num_folds} folds), {len(datalist['testing'])} testing -> {path}")
    print(f"AutoRunner input: dataroot={path.parent}, datalist={path}, class_names={datalist['class_names']}")
    print(f"ctfm evaluate-tumour scores label {datalist['tumour_label']} ({datalist['labels'][str(datalist['tumour_label'])]})")
    return 0
