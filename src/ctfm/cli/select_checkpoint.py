"""`ctfm select-checkpoint`: the command line of :mod:`ctfm.pretraining.select`."""

from __future__ import annotations

import json

from ctfm.pretraining import select

DESCRIPTION = select.__doc__
EXAMPLES = """  ctfm select-checkpoint runs/pretrain/encoders/ --datalist totalseg_5pct.json --dataset-dir /data/totalseg --output-dir selection/
  ctfm select-checkpoint runs/pretrain/encoders/ --recipe paper --datalist totalseg_5pct.json --output-dir selection/
  ctfm select-checkpoint ckpt_a/ ckpt_b/ --datalist dataset.json --iterations 50 --patch-size 32 64 64 --output-dir sel/
"""


def add_arguments(parser) -> None:
    parser.add_argument("encoders", nargs="+", help="encoder folders, or folders of them (e.g. runs/pretrain/encoders)")
    parser.add_argument("--datalist", required=True, help="decathlon JSON: 'training' (few labelled) and 'validation'")
    parser.add_argument("--dataset-dir", default=None, help="base of the datalist's relative paths (default: its folder)")
    parser.add_argument("--output-dir", required=True, help="where checkpoint_dice.csv and .png go")
    parser.add_argument("--iterations", type=int, default=500, help="decoder training steps per encoder")
    parser.add_argument("--patch-size", type=int, nargs=3, default=(32, 96, 96), help="crop (S P L), multiples of 16")
    parser.add_argument("--inference-roi", type=int, nargs=3, default=None,
                        help="sliding-window size for the held-out cases (default: the patch size)")
    parser.add_argument("--num-classes", type=int, default=118, help="output channels incl. background")
    parser.add_argument("--batch-size", type=int, default=2, help="crops per step")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="decoder learning rate (AdamW)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda:0")
    parser.add_argument("--recipe", choices=select.RECIPES, default="quick",
                        help="quick: a cheap proxy (depth-1 decoder, --iterations steps); paper: the authors' probe, "
                        "the segmentation bundle's full recipe with the encoder frozen (GPU)")
    parser.add_argument("--epochs", type=int, default=select.PAPER_EPOCHS, help="training epochs of --recipe paper")
    parser.add_argument("--set", action="append", default=[], metavar="ID=VALUE",
                        help="--recipe paper: another id of the segmentation bundle (JSON value), e.g. val_interval=1")
    parser.add_argument("--bundles-dir", default=None, help="--recipe paper: the bundles/ folder (default: $CTFM_BUNDLES)")
    parser.add_argument("--seed", type=int, default=0, help="the same for every encoder")
    parser.add_argument("--overwrite", action="store_true",
                        help="start the table in --output-dir over (needed for other settings or changed encoders)")


def bundle_overrides(pairs: list[str]) -> dict:
    """``["id=value", ...]`` -> ``{id: value}``, the value read as JSON when it is JSON, else as text."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {pair!r}: expected ID=VALUE, e.g. --set patch_size=[96,160,160].")
        try:
            overrides[key] = json.loads(value)
        except ValueError:
            overrides[key] = value
    return overrides


def run(args) -> int:
    table = select.select_checkpoints(
        encoders=args.encoders, datalist=args.datalist, output_dir=args.output_dir, dataset_dir=args.dataset_dir,
        iterations=args.iterations, patch_size=tuple(args.patch_size), num_classes=args.num_classes,
        batch_size=args.batch_size, learning_rate=args.learning_rate, device=args.device, seed=args.seed,
        inference_roi=tuple(args.inference_roi) if args.inference_roi else None, overwrite=args.overwrite,
        recipe=args.recipe, epochs=args.epochs, bundle_overrides=bundle_overrides(args.set), bundles=args.bundles_dir,
    )
    rows = select.read_table(table)
    best = max(rows, key=lambda r: float(r["mean_dice"]))
    print(f"best: {best['encoder']} (mean Dice {best['mean_dice']}, {args.recipe} recipe); table {table}; "
          f"plot {table.with_suffix('.png')}")
    return 0
