"""`ctfm convert-sinoct`: the command line of :mod:`ctfm.datasets.sinoct`."""

from __future__ import annotations

import json

from ctfm.datasets import sinoct

DESCRIPTION = sinoct.__doc__
EXAMPLES = """  ctfm convert-sinoct --sinoct-dir /data/SinoCT --output /data/SinoCT/datalist.json
  ctfm convert-sinoct --sinoct-dir /data/SinoCT --output sinoct_seed1.json --seed 1
  ctfm convert-sinoct --sinoct-dir /data/SinoCT --output sinoct_balanced.json --split stratified
"""


def add_arguments(parser) -> None:
    parser.add_argument("--sinoct-dir", required=True, help="the SinoCT folder: labels.csv and one folder per patient")
    parser.add_argument("--output", required=True, help="datalist JSON to write (refused if it exists)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0, as the authors)")
    parser.add_argument("--split", choices=sinoct.SPLIT_METHODS, default="authors",
                        help="authors: the CT-FM authors' lists (default, the paper's); stratified: class-balanced lists")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")


def run(args) -> int:
    path = sinoct.convert_sinoct(sinoct_dir=args.sinoct_dir, output=args.output, seed=args.seed,
                                 overwrite=args.overwrite, split=args.split)
    counts = {k: len(v) for k, v in json.loads(path.read_text()).items() if k in sinoct.SPLITS}
    print(f"SinoCT datalist: {path} {counts}")
    return 0
