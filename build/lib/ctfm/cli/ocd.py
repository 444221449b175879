"""Organ centroid distance (OCD): how well semantic search finds an organ from one point (paper, Figure 6c).

The paper's definition (Methods, "Organ Centroid Distance"): take the centroid of a structure
(the heart by default, TotalSegmentator id 51) in a source scan as the query point; semantic
search (``ctfm search``) finds the best-matching box in every other scan; the OCD is the distance
in cm between the centre of that box and the structure's centroid in the target. The inside rate
is the fraction of targets whose best-match centre falls inside the structure. Scans without the
structure are skipped (the paper compares only scans that contain it).

Input: a decathlon-style datalist whose entries have "image" and a "label" map. Each target's row
is appended to ``ocd.csv`` as soon as it is done, so a killed run resumes where it stopped;
``summary.json`` holds the mean +- sd, a bootstrap 95% interval, and the inside rate.
"""

from __future__ import annotations

DESCRIPTION = __doc__
EXAMPLES = """  ctfm ocd --weights ct_fm_feature_extractor/ --datalist totalseg_thorax.json --dataset-dir /data/totalseg --output-dir ocd_heart/
  ctfm ocd --weights ct_fm_feature_extractor/ --datalist dataset.json --structure liver --source-index 3 --method windows --output-dir ocd_liver/
"""


def add_arguments(parser) -> None:
    from ctfm.cli.search import DEFAULT_BOX, DEFAULT_STRIDE, add_window_arguments

    parser.add_argument("--datalist", required=True, help="decathlon-style JSON with 'image' and 'label' per entry")
    parser.add_argument("--dataset-dir", default=None, help="base folder of the datalist's relative paths")
    parser.add_argument("--structure", default="heart", help="TotalSegmentator v2 name or id of the structure")
    parser.add_argument("--source-index", type=int, default=0, help="which entry (in list order) is the source scan")
    add_window_arguments(parser, box=DEFAULT_BOX, stride=DEFAULT_STRIDE)
    parser.add_argument("--output-dir", required=True, help="folder for ocd.csv and summary.json (reused to resume)")


def run(args) -> int:
    from ctfm.cli.search import organ_centroid_distance

    summary = organ_centroid_distance(
        datalist=args.datalist, dataset_dir=args.dataset_dir, weights=args.weights, output_dir=args.output_dir,
        structure=args.structure, source_index=args.source_index, box=args.box, stride=args.stride,
        method=args.method, spacing=args.spacing, batch_size=args.batch_size, device=args.device,
    )
    print(f"OCD {summary['ocd_cm_mean']:.2f} +- {summary['ocd_cm_sd']:.2f} cm, inside rate "
          f"{summary['inside_rate']:.3f} over {summary['n_targets']} target(s): {args.output_dir}/summary.json")
    return 0
