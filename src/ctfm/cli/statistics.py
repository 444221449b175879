"""Per-structure statistics of an existing label map: volume (ml), HU mean / sd / min / max, and `incomplete`
when the structure touches the border of the scan (so part of it is likely outside the field of view).

The label map holds TotalSegmentator class-map ids (what `ctfm segment` and the segmentation bundle write)
on the grid of the CT image. The JSON has the layout of `ctfm segment --statistics`: {scan: {structure: {...}}}.
"""

from __future__ import annotations

import json

DESCRIPTION = __doc__
EXAMPLES = """  ctfm statistics --image ct.nii.gz --seg segs/ct_seg.nii.gz --output ct_statistics.json
"""


def add_arguments(parser) -> None:
    parser.add_argument("--image", required=True, help="the CT (file or DICOM series folder), in HU")
    parser.add_argument("--seg", required=True, help="its label map (class-map ids) on the same grid")
    parser.add_argument("--output", default=None, help="JSON file to write (default: print to stdout)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def run(args) -> int:
    from ctfm.segmentation import segmentation_statistics

    stats = segmentation_statistics(image=args.image, seg=args.seg, output=args.output, overwrite=args.overwrite)
    print(f"wrote {args.output}" if args.output else json.dumps(stats, indent=2))
    return 0
