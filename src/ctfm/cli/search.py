"""``ctfm search``: argparse over :func:`ctfm.analysis.search.semantic_search`."""

from __future__ import annotations

import csv

from ctfm.analysis import search as analysis
from ctfm.analysis.patch_embeddings import PRECISIONS
from ctfm.cli._options import add_window_arguments, window_options

DESCRIPTION = analysis.__doc__
EXAMPLES = """  ctfm search --weights ct_fm_feature_extractor/ --source chest1.nii.gz --point 120 250 80 --output-dir search/ chest2.nii.gz chest3.nrrd
  ctfm search --weights ct_fm_feature_extractor/ --source a.nii.gz --point -10.5 20 -300 --point-space mm --box 16 64 64 --stride 8 16 16 --method windows --output-dir search_exact/ b.nii.gz
"""


def add_arguments(parser) -> None:
    parser.add_argument("targets", nargs="+", help="target scans (NIfTI/NRRD files or DICOM folders)")
    parser.add_argument("--source", required=True, help="the scan holding the query point")
    parser.add_argument("--point", required=True, nargs=3, type=float, metavar=("I", "J", "K"),
                        help="query point in the source: voxel indices of the file (default) or world mm")
    parser.add_argument("--point-space", choices=("voxel", "mm"), default="voxel",
                        help="voxel: 0-based array indices as stored in the file; mm: world RAS coordinates (3D Slicer)")
    add_window_arguments(parser, box=analysis.DEFAULT_BOX, stride=analysis.DEFAULT_STRIDE)
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="encoder arithmetic of the pooled method: bf16 autocast is ~2.8x faster on CPUs with "
                             "AVX512-BF16/AMX (same best matches in the tests); fp32 elsewhere")
    parser.add_argument("--output-dir", required=True, help="new folder for heatmaps, PNGs and matches.csv")


def run(args) -> int:
    index = analysis.semantic_search(source=args.source, point=args.point, point_space=args.point_space,
                                     targets=args.targets, output_dir=args.output_dir, precision=args.precision,
                                     **window_options(args))
    print(f"best matches: {index}")
    with open(index) as f:
        for row in csv.DictReader(f):
            print(f"  {row['target']}: voxel ({row['voxel_i']}, {row['voxel_j']}, {row['voxel_k']}), "
                  f"similarity {row['similarity']}")
    return 0
