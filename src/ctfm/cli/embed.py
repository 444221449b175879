"""``ctfm embed``: argparse over :func:`ctfm.analysis.embeddings.embed_files`."""

from __future__ import annotations

import sys

from ctfm.analysis import embeddings as analysis

DESCRIPTION = analysis.__doc__ + """
Exit status 1 when any scan failed (the others are embedded; see failures.csv), 0 when all are in the folder.
"""
EXAMPLES = """  ctfm embed --weights ct_fm_feature_extractor/ --output-dir embeddings/ scan1.nii.gz scan2.nrrd dicom_series_dir/
  ctfm embed --weights ct_fm_feature_extractor/ --output-dir embeddings/ --datalist dataset.json --dataset-dir /data
  ctfm embed --weights ct_fm_feature_extractor/ --aggregate min --output-dir embeddings_patch_min/ --datalist 3d_mir.json
"""


def add_arguments(parser) -> None:
    from ctfm.analysis.patch_embeddings import AGGREGATIONS, DEFAULT_OVERLAP, DEFAULT_WINDOW

    parser.add_argument("inputs", nargs="*", help="NIfTI/NRRD files or DICOM series folders")
    parser.add_argument("--weights", required=True, help="CT-FM weights in any supported form")
    parser.add_argument("--output-dir", required=True, help="folder for <scan id>.npy files and embeddings.csv")
    parser.add_argument("--datalist", default=None, help="decathlon-style JSON; every list's 'image' entries are used")
    parser.add_argument("--dataset-dir", default=None, help="base folder of the datalist's relative paths")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda:0")
    parser.add_argument("--aggregate", choices=AGGREGATIONS, default=None,
                        help="patch-wise embeddings reduced this way (default: whole volume at once)")
    parser.add_argument("--window", nargs=3, type=int, default=list(DEFAULT_WINDOW), metavar=("S", "P", "L"),
                        help="patch size in voxels with --aggregate")
    parser.add_argument("--overlap", type=float, default=DEFAULT_OVERLAP, help="patch overlap 0..<1 with --aggregate")
    parser.add_argument("--overwrite", action="store_true",
                        help="recompute scans whose embedding is already in --output-dir (needed when a new file "
                             "has an old file's name); the folder's weights and settings must still match")


def run(args) -> int:
    done = analysis.embed_files(
        paths=args.inputs, datalist=args.datalist, dataset_dir=args.dataset_dir, weights=args.weights,
        output_dir=args.output_dir, device=args.device, aggregate=args.aggregate, window=args.window,
        overlap=args.overlap, overwrite=args.overwrite)
    print(f"{len(done.embedded)} scan(s) embedded, {len(done.kept)} already there: {done.index}")
    if done.failures:  # each on its own line, last: the user's terminal ends with what went wrong
        print(f"{len(done.failures)} scan(s) failed (also in {done.index.with_name(analysis.FAILURES_FILE)}):",
              *done.failures.values(), sep="\n", file=sys.stderr)
    return 1 if done.failures else 0
