"""Argument groups that several subcommands share (the only module of ``ctfm.cli`` that others import)."""

from __future__ import annotations


def add_window_arguments(parser, box, stride, box_help="query box / window size in voxels of the CT-FM grid (S P L)") -> None:
    """The options every patch tool shares: weights, grid, window, stride, method, device."""
    from ctfm.analysis.patch_embeddings import METHODS
    from ctfm.registry import EMBEDDING_SPACING

    parser.add_argument("--weights", required=True, help="CT-FM weights in any supported form")
    parser.add_argument("--box", nargs=3, type=int, default=list(box), metavar=("S", "P", "L"), help=box_help)
    parser.add_argument("--stride", nargs=3, type=int, default=list(stride), metavar=("S", "P", "L"),
                        help="window step in voxels")
    parser.add_argument("--method", choices=METHODS, default="pooled",
                        help="pooled: one encoder pass per scan (fast); windows: one pass per window (the paper's)")
    parser.add_argument("--spacing", nargs=3, type=float, default=list(EMBEDDING_SPACING), metavar=("S", "P", "L"),
                        help="voxel size in mm of the CT-FM grid")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per encoder pass (method windows)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda:0")


def window_options(args) -> dict:
    """The values of :func:`add_window_arguments`' options, as keyword arguments of the ``ctfm.analysis`` functions."""
    return {"weights": args.weights, "box": args.box, "stride": args.stride, "method": args.method,
            "spacing": args.spacing, "batch_size": args.batch_size, "device": args.device}
