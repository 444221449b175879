"""`ctfm compare-segmentation`: the command line of :mod:`ctfm.evaluation.segmentation`."""

from __future__ import annotations

from pathlib import Path

from ctfm.evaluation import segmentation

DESCRIPTION = segmentation.__doc__
EXAMPLES = """  ctfm compare-segmentation --a runs/evaluate_ctfm/per_structure_dice.csv --b runs/evaluate_random/per_structure_dice.csv --output compare/
  ctfm compare-segmentation --a ctfm.csv --b random.csv --name-a CT-FM --name-b "random init" --output compare/
"""


def add_arguments(parser) -> None:
    parser.add_argument("--a", required=True, help="per_structure_dice.csv of the model under test (e.g. CT-FM)")
    parser.add_argument("--b", required=True, help="per_structure_dice.csv of the baseline (e.g. random init)")
    parser.add_argument("--name-a", default="CT-FM", help="legend name of --a")
    parser.add_argument("--name-b", default="random init", help="legend name of --b")
    parser.add_argument("--output", required=True, help="folder for structures.csv, groups.csv, comparison.png")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier comparison in --output")
    parser.add_argument("--label-groups", default=None,
                        help='label groups JSON, {"groups": {group: [structure, ...]}} (default: the paper\'s)')


def run(args) -> int:
    summary = segmentation.compare_segmentation(a=args.a, b=args.b, output=args.output, name_a=args.name_a,
                                                name_b=args.name_b, label_groups=args.label_groups,
                                                overwrite=args.overwrite)
    print(f"{args.name_a} wins on {summary['win_rate_percent']:.1f}% of {summary['structures_compared']} structures")
    for g, means in summary["groups"].items():
        print(f"  {g:10s} " + "  ".join(f"{k}: {v:.3f}" for k, v in means.items()))
    print(f"-> {Path(args.output) / 'comparison.png'}")
    return 0
