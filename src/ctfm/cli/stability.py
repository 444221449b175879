"""``ctfm stability``: argparse over :func:`ctfm.analysis.stability.stability`."""

from __future__ import annotations

from ctfm.analysis import stability as analysis
from ctfm.cli._options import add_window_arguments, window_options

DESCRIPTION = analysis.__doc__
EXAMPLES = """  ctfm stability --weights ct_fm_feature_extractor/ --output-dir rider_001/ test.nii.gz retest.nii.gz
  ctfm stability --weights ct_fm_feature_extractor/ --register --output-dir rider_002/ test.nii.gz retest.nii.gz
  ctfm stability --weights ct_fm_feature_extractor/ --transform retest_to_test.txt --method windows --output-dir rider_003/ test.nrrd retest.nrrd
"""


def add_arguments(parser) -> None:
    parser.add_argument("test", help="the first scan (its grid is the reference)")
    parser.add_argument("retest", help="the second scan of the same patient")
    align = parser.add_mutually_exclusive_group()
    align.add_argument("--register", action="store_true",
                       help="rigidly register the retest scan onto the test scan first (ITK); the matrix goes to "
                       f"{analysis.REGISTRATION_FILE}")
    align.add_argument("--transform", default=None,
                       help="text file with a 4x4 matrix (world RAS mm) mapping retest points onto test points")
    add_window_arguments(parser, box=analysis.DEFAULT_BOX, stride=analysis.DEFAULT_STRIDE,
                         box_help="window size in voxels (S P L)")
    parser.add_argument("--output-dir", required=True, help="new folder for the maps, windows.csv and summary.json")


def run(args) -> int:
    s = analysis.stability(test=args.test, retest=args.retest, register=args.register, transform=args.transform,
                           output_dir=args.output_dir, **window_options(args))
    if s["registration"]:
        r = s["registration"]
        print(f"rigid registration: {r['rotation_deg']} degrees, {r['translation_mm']} mm -> {r['file']}")
    print(f"cosine similarity inside the body: mean {s['cosine_mean']:.4f}, min {s['cosine_min']:.4f} over "
          f"{s['windows_inside_body']} windows; {s['outliers']} outlier window(s). Maps and tables: {args.output_dir}")
    return 0
