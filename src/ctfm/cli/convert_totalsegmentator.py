"""`ctfm convert-totalsegmentator`: the command line of :mod:`ctfm.datasets.totalsegmentator`."""

from __future__ import annotations

import json

from ctfm.datasets import totalsegmentator

DESCRIPTION = totalsegmentator.__doc__
EXAMPLES = """  ctfm convert-totalsegmentator --source Totalsegmentator_dataset_v201 --output totalseg_prepared
  python -m monai.bundle run --config_file configs/train.json --dataset_dir totalseg_prepared --num_train 10
"""


def add_arguments(parser) -> None:
    parser.add_argument("--source", required=True, help="the unpacked dataset: meta.csv and one folder per case")
    parser.add_argument("--output", required=True, help="folder for labels/ and datalist.json")
    parser.add_argument("--overwrite", action="store_true", help="rewrite label maps and the datalist")


def run(args) -> int:
    path = totalsegmentator.convert_totalsegmentator(source=args.source, output=args.output, overwrite=args.overwrite)
    counts = {k: len(v) for k, v in json.loads(path.read_text()).items() if k in totalsegmentator.SPLITS.values()}
    print(f"wrote {path}: {counts}")
    return 0
