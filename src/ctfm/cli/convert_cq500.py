"""`ctfm convert-cq500`: the command line of :mod:`ctfm.datasets.cq500`."""

from __future__ import annotations

import json

from ctfm.datasets import cq500

DESCRIPTION = cq500.__doc__
EXAMPLES = """  ctfm convert-cq500 --cq500-dir /data/CQ500 --output /data/CQ500/datalist.json
  ctfm convert-cq500 --cq500-dir /data/CQ500 --reads /data/CQ500/reads.csv --rule majority --output cq500_majority.json
"""


def add_arguments(parser) -> None:
    parser.add_argument("--cq500-dir", required=True, help="the CQ500 folder: one CQ500CT<N> folder per study")
    parser.add_argument("--reads", default=None, help="reads.csv (default: <cq500-dir>/reads.csv)")
    parser.add_argument("--output", required=True, help="datalist JSON to write (refused if it exists)")
    parser.add_argument("--rule", choices=cq500.RULES, default="any",
                        help="how three reads become one label (default any)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")


def run(args) -> int:
    path = cq500.convert_cq500(cq500_dir=args.cq500_dir, output=args.output, reads=args.reads, rule=args.rule,
                               overwrite=args.overwrite)
    written = json.loads(path.read_text())
    n_abnormal = sum(e["label"] for e in written["testing"])
    print(f"CQ500 datalist: {path} ({len(written['testing'])} scans, {n_abnormal} abnormal, "
          f"{len(written['skipped'])} skipped)")
    return 0
