"""Write CT-like phantoms with known ground truth: body CTs with TotalSegmentator v2 labels, head CTs
with and without bleeds (for triage), and defective inputs (for error tests).

Each kind goes to its own folder under --output-dir: body/ and head/ (NIfTI and a decathlon-style
datalist.json), defects/ (one file per defect and defects.json). The same --seed always writes the
same files; a rerun leaves identical files alone and refuses to replace different ones unless
--overwrite is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ctfm.data import phantoms

DESCRIPTION = __doc__
EXAMPLES = """  ctfm make-phantoms --kind body --num 4 --output-dir phantoms/
  ctfm make-phantoms --kind all --num 8 --seed 1 --output-dir phantoms/
"""
KINDS = ("body", "head", "defects")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be within 0..1, got {text}")
    return value


def add_arguments(parser) -> None:
    parser.add_argument("--kind", choices=KINDS + ("all",), default="all", help="what to write (default: all)")
    parser.add_argument("--num", type=_positive_int, default=None,
                        help="body or head phantoms to write (default: 4 body, 8 head: enough for both classes in "
                        "every head list)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same files")
    parser.add_argument("--output-dir", type=Path, required=True, help="folder that receives body/, head/, defects/")
    parser.add_argument("--bleed-fraction", type=_fraction, default=0.5,
                        help="share of head phantoms with a bleed (label 1) (default: 0.5)")
    parser.add_argument("--bleed-size", type=float, default=1.0,
                        help="multiplies bleed sizes (default: 1, 8-20 mm semi-axes in an adult head; 2 gives large "
                        "haematomas that a tiny network learns to flag in a short CPU run)")
    parser.add_argument("--overwrite", action="store_true", help="replace files that differ from what would be written")


def run(args) -> int:
    kinds = KINDS if args.kind == "all" else (args.kind,)
    try:
        for kind in kinds:
            out = Path(args.output_dir) / kind
            if kind == "body":
                num = args.num or 4
                path = phantoms.write_body_phantoms(output_dir=out, num=num, seed=args.seed, overwrite=args.overwrite)
                print(f"body phantoms: {num} in {out}, datalist {path}")
            elif kind == "head":
                num = args.num or 8
                path = phantoms.write_head_phantoms(output_dir=out, num=num, seed=args.seed,
                                                    bleed_fraction=args.bleed_fraction, bleed_size=args.bleed_size,
                                                    overwrite=args.overwrite)
                print(f"head phantoms: {num} in {out}, datalist {path}")
            else:
                paths = phantoms.write_defective_inputs(output_dir=out, seed=args.seed, overwrite=args.overwrite)
                print(f"defective inputs: {len(paths)} in {out}, manifest {out / phantoms.DEFECTS_MANIFEST}")
    except FileExistsError as err:  # the message already says what to do
        print(f"ctfm make-phantoms: error: {err}", file=sys.stderr)
        return 1
    return 0
