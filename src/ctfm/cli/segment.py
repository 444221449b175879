"""Segment CT scans into the 117 TotalSegmentator structures with the CT-FM whole-body network.

Runs the segmentation bundle's own inference.json components (network, preprocessing, sliding-window
inferer, postprocessing onto the input's grid), so it needs the bundles/ folder of a CT-FM checkout
(--bundles-dir or $CTFM_BUNDLES). Writes per scan <id>_seg.nii.gz (class-map ids, uint8, on the input's
grid) and <id>_seg.json (the names); optionally per-structure masks, probabilities (uint8, p = value / 255),
statistics.json (volume ml, HU mean/sd/min/max, `incomplete` when a structure touches the scan's border),
a preview PNG and a DICOM SEG (DICOM input; needs the `dicom` extra: highdicom).
Every input, name, weight and output path is checked before the first scan is segmented; existing outputs
are never replaced without --overwrite.
"""

from __future__ import annotations

import json

DESCRIPTION = __doc__
EXAMPLES = """  ctfm segment -i ct.nii.gz -o segs/ --weights whole_body_segmentation/
  ctfm segment -i dicom_series/ -o segs/ --weights model.pt --structures liver spleen --output-type dicom_seg
  ctfm segment -i scans/ -o segs/ --weights model.pt --groups organs --statistics --preview --per-structure
  ctfm segment -i ct.nii.gz -o segs/ --weights model.pt --override overlap=0.625   # the authors' overlap
"""


def _override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--override {text!r}: write ID=VALUE, e.g. overlap=0.625 or spacing=[3,3,3]")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value  # a plain string, e.g. precision=fp32


def add_arguments(parser) -> None:
    parser.add_argument("-i", "--input", required=True, help="CT file, DICOM series folder, or folder of scans")
    parser.add_argument("-o", "--output-dir", required=True, help="folder for the outputs")
    parser.add_argument("--weights", required=True, help="trained bundle model.pt or the released whole-body folder")
    parser.add_argument("--structures", nargs="+", metavar="NAME", help="write only these class-map structures")
    parser.add_argument("--groups", nargs="+", metavar="GROUP",
                        help="write only these label groups (organs, vertebrae, cardiac, muscles, ribs)")
    parser.add_argument("--per-structure", action="store_true", help="also one binary mask per structure")
    parser.add_argument("--probabilities", action="store_true",
                        help="also the softmax of the chosen structures, uint8 (p = value / 255)")
    parser.add_argument("--statistics", action="store_true", help="also statistics.json: volume and HU per structure")
    parser.add_argument("--preview", action="store_true", help="also a PNG of orthogonal slices with the labels")
    parser.add_argument("--output-type", choices=("nifti", "dicom_seg"), default="nifti",
                        help="label map as NIfTI (default) or DICOM SEG (DICOM input; needs highdicom)")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda:0, ...")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--bundles-dir", default=None, help="the bundles/ folder of a checkout (default $CTFM_BUNDLES)")
    parser.add_argument("--override", action="append", default=[], metavar="ID=VALUE",
                        help="a segmentation inference.json override (JSON value), e.g. overlap=0.625; repeatable")


def run(args) -> int:
    from ctfm.segmentation import segment

    segment(
        input=args.input, output_dir=args.output_dir, weights=args.weights, structures=args.structures,
        groups=args.groups, per_structure=args.per_structure, probabilities=args.probabilities,
        statistics=args.statistics, preview=args.preview, output_type=args.output_type, device=args.device,
        overwrite=args.overwrite, bundles_dir=args.bundles_dir, overrides=dict(map(_override, args.override)),
    )
    return 0
