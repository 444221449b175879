"""``ctfm search-app``: argparse over :func:`ctfm.apps.search_app.serve_search_app`."""

from __future__ import annotations

from ctfm.analysis.patch_embeddings import PRECISIONS
from ctfm.analysis.search import DEFAULT_STRIDE
from ctfm.apps import search_app as app
from ctfm.registry import EMBEDDING_SPACING

DESCRIPTION = app.__doc__
EXAMPLES = """  ctfm search-app --scans ~/.cache/ctfm/sample_ct --weights ct_fm_feature_extractor/ --port 8501
  ctfm search-app --scans datalist.json --weights runs/pretrain/ct_fm_encoder --precision fp32
"""


def add_arguments(parser) -> None:
    parser.add_argument("--scans", required=True,
                        help="a folder of scans (NIfTI/NRRD files, DICOM series folders; searched at any depth) "
                             "or a decathlon-style datalist (.json)")
    parser.add_argument("--weights", required=True, help="CT-FM weights in any supported form (released folder, ...)")
    parser.add_argument("--port", type=int, default=8501, help="port to listen on (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; the default keeps the app on this machine")
    parser.add_argument("--stride", nargs=3, type=int, default=list(DEFAULT_STRIDE), metavar=("S", "P", "L"),
                        help="window step in voxels of the CT-FM grid")
    parser.add_argument("--spacing", nargs=3, type=float, default=list(EMBEDDING_SPACING), metavar=("S", "P", "L"),
                        help="voxel size in mm of the CT-FM grid")
    parser.add_argument("--precision", choices=PRECISIONS, default="bf16",
                        help="encoder arithmetic: bf16 autocast where the CPU/GPU has it (~2.8x faster on CPU), "
                             "else fp32")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda:0")


def run(args) -> int:
    app.serve_search_app(scans=args.scans, weights=args.weights, port=args.port, host=args.host, stride=args.stride,
                         spacing=args.spacing, device=args.device, precision=args.precision)
    return 0
