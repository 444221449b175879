"""``ctfm pca``: argparse over :func:`ctfm.analysis.pca.pca_maps`."""

from __future__ import annotations

from ctfm.analysis import pca as analysis
from ctfm.cli._options import add_window_arguments, window_options

DESCRIPTION = analysis.__doc__
EXAMPLES = """  ctfm pca --weights ct_fm_feature_extractor/ --output-dir pca/ chest1.nii.gz chest2.nii.gz
  ctfm pca --weights ct_fm_feature_extractor/ --method windows --box 24 64 64 --stride 6 16 16 --output-dir pca_paper/ a.nrrd b.nrrd
"""


def add_arguments(parser) -> None:
    parser.add_argument("inputs", nargs="+", help="two or more scans (NIfTI/NRRD files or DICOM folders)")
    add_window_arguments(parser, box=analysis.DEFAULT_BOX, stride=analysis.DEFAULT_STRIDE,
                         box_help="patch size in voxels (S P L)")
    parser.add_argument("--background-threshold", type=float, default=0.0,
                        help="patches whose (oriented, z-scored) first component is below this are background")
    parser.add_argument("--output-dir", required=True, help="new folder for pca_concepts.png and <scan id>_pc1..3.nii.gz")


def run(args) -> int:
    pngs = analysis.pca_maps(inputs=args.inputs, background_threshold=args.background_threshold,
                             output_dir=args.output_dir, **window_options(args))
    for png in pngs:
        print(f"PCA concept map: {png}")
    return 0
