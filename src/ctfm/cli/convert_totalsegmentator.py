"""`ctfm convert-totalsegmentator`: the command line of :mod:`ctfm.datasets.totalsegmentator`."""

from __future__ import annotations

import json

from ctfm.datasets import totalsegmentator

DESCRIPTION = totalsegmentator.__doc__
EXAMPLES = """  ctfm convert-totalsegmentator --source Totalsegmentator_dataset_v201 --output totalseg_prepared \\
      --split-file TotalSegmentatorV2_5_folds.json
  python -m monai.bundle run --config_file configs/train.json --dataset_dir totalseg_prepared --num_train 10
"""


def add_arguments(parser) -> None:
    parser.add_argument("--source", required=True, help="the unpacked dataset: meta.csv and one folder per case")
    parser.add_argument("--output", required=True, help="folder for labels/ and datalist.json")
    parser.add_argument(
        "--split", choices=totalsegmentator.SPLIT_CHOICES, default=None,
        help="vista3d: the paper's split (needs --split-file); official: meta.csv's. Default: vista3d when "
        "--split-file is given, official otherwise",
    )
    parser.add_argument("--split-file", default=None, help="VISTA3D's TotalSegmentatorV2_5_folds.json (not shipped)")
    parser.add_argument("--overwrite", action="store_true", help="rewrite label maps and the datalist")


def run(args) -> int:
    path = totalsegmentator.convert_totalsegmentator(
        source=args.source, output=args.output, overwrite=args.overwrite, split=args.split, split_file=args.split_file
    )
    counts = {k: len(v) for k, v in json.loads(path.read_text()).items() if k in totalsegmentator.SPLITS.values()}
    print(f"wrote {path}: {counts}, split {json.loads(path.read_text())['split']}")
    return 0
