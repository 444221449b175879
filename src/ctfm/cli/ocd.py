"""``ctfm ocd``: argparse over :func:`ctfm.analysis.ocd.organ_centroid_distance`."""

from __future__ import annotations

from ctfm.analysis import ocd as analysis
from ctfm.cli._options import add_window_arguments, window_options

DESCRIPTION = analysis.__doc__
EXAMPLES = """  ctfm ocd --weights ct_fm_feature_extractor/ --datalist totalseg_thorax.json --dataset-dir /data/totalseg --output-dir ocd_heart/
  ctfm ocd --protocol paper --weights ct_fm_feature_extractor/ --datalist totalseg_thorax.json --output-dir ocd_heart_paper/
  ctfm ocd --weights ct_fm_feature_extractor/ --datalist dataset.json --structure liver --source-index 3 --method windows --output-dir ocd_liver/
"""


def add_arguments(parser) -> None:
    parser.add_argument("--datalist", required=True, help="decathlon-style JSON with 'image' and 'label' per entry")
    parser.add_argument("--dataset-dir", default=None, help="base folder of the datalist's relative paths")
    parser.add_argument("--structure", default="heart", help="TotalSegmentator v2 name or id of the structure")
    parser.add_argument("--source-index", type=int, default=0, help="which entry (in list order) is the source scan")
    add_window_arguments(parser, box=analysis.DEFAULT_BOX, stride=analysis.DEFAULT_STRIDE)
    parser.add_argument("--protocol", choices=analysis.PROTOCOLS, default="project",
                        help="paper: the authors' 1 mm grid, 64^3 box, overlap 0.625, per-window crops (replaces --box, "
                        "--stride, --method, --spacing); project: those options as given")
    parser.add_argument("--output-dir", required=True,
                        help="folder for ocd.csv and summary.json (reused to resume, same weights and settings)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start --output-dir over, replacing its results (needed for other weights or settings)")


def run(args) -> int:
    summary = analysis.organ_centroid_distance(datalist=args.datalist, dataset_dir=args.dataset_dir,
                                               structure=args.structure, source_index=args.source_index,
                                               output_dir=args.output_dir, overwrite=args.overwrite,
                                               protocol=args.protocol,
                                               **window_options(args))
    print(f"OCD {summary['ocd_cm_mean']:.2f} +- {summary['ocd_cm_sd']:.2f} cm, inside rate "
          f"{summary['inside_rate']:.3f} (strict), {summary['inside_rate_lenient']:.3f} (the authors' lenient test) "
          f"over {summary['n_targets']} target(s), {args.protocol} protocol: {args.output_dir}/summary.json")
    return 0
