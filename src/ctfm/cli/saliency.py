"""``ctfm saliency``: argparse over :func:`ctfm.analysis.saliency.saliency_maps`."""

from __future__ import annotations

from ctfm.analysis import saliency as analysis

DESCRIPTION = analysis.__doc__
EXAMPLES = """  ctfm saliency --weights ct_fm_feature_extractor/ --output-dir saliency/ chest_ct.nii.gz
  ctfm saliency --weights ct_fm_feature_extractor/ --spacing 6 6 6 --mask-size 8 --overlap 0 --device cuda:0 --output-dir saliency_fast/ scan.nrrd
"""


def add_arguments(parser) -> None:
    parser.add_argument("inputs", nargs="+", help="NIfTI/NRRD files or DICOM series folders")
    parser.add_argument("--weights", required=True, help="CT-FM weights in any supported form")
    parser.add_argument("--output-dir", required=True, help="new folder for <scan id>_saliency.nii.gz and .png")
    parser.add_argument("--spacing", nargs=3, type=float, default=list(analysis.SALIENCY_SPACING), metavar=("S", "P", "L"),
                        help="voxel size in mm the map is computed on")
    parser.add_argument("--mask-size", type=int, default=8, help="occluder edge in voxels (paper: 8)")
    parser.add_argument("--overlap", type=float, default=0.25, help="occluder overlap 0..<1 (authors: 0.25)")
    parser.add_argument("--batch-size", type=int, default=8, help="occluded copies per encoder pass")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda:0")


def run(args) -> int:
    paths = analysis.saliency_maps(
        inputs=args.inputs, weights=args.weights, output_dir=args.output_dir, spacing=args.spacing,
        mask_size=args.mask_size, overlap=args.overlap, batch_size=args.batch_size, device=args.device)
    for p in paths:
        print(f"saliency map: {p} (and {p.name.replace('.nii.gz', '.png')})")
    return 0
