"""Write a segmentation bundle's models/model.pt: the network MONAI Label and the bundle's inference.json load.

From the released whole-body weights (a folder with config.json + model.safetensors of a SegResNetDS with
118 outputs and dsdepth 4), from a bundle model.pt, or, with --encoder-only, from CT-FM encoder weights
(the decoder then starts fresh, from --seed, ready to fine-tune). Every tensor is checked against the network.
"""

from __future__ import annotations

DESCRIPTION = __doc__
EXAMPLES = """  ctfm segmentation-model --weights whole_body_segmentation/ \\
      --output bundles/ct_fm_segmentation/models/model.pt
  ctfm segmentation-model --weights ct_fm_feature_extractor/ --encoder-only \\
      --output bundles/ct_fm_segmentation/models/model.pt
"""


def add_arguments(parser) -> None:
    parser.add_argument("--weights", required=True, help="whole-body folder, bundle model.pt, or encoder weights")
    parser.add_argument("--output", required=True, help="the model.pt to write (never replaced without --overwrite)")
    parser.add_argument("--encoder-only", action="store_true", help="--weights holds CT-FM encoder weights only")
    parser.add_argument("--out-channels", type=int, default=118, help="outputs, background included (default 118)")
    parser.add_argument("--dsdepth", type=int, default=4, help="deep-supervision depth of the network (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of a fresh decoder (with --encoder-only)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def run(args) -> int:
    from ctfm.weights import save_model_state, segmentation_model

    model = segmentation_model(
        weights=args.weights, out_channels=args.out_channels, dsdepth=args.dsdepth,
        encoder_only=args.encoder_only, seed=args.seed,
    )
    print(f"wrote {save_model_state(model=model, path=args.output, overwrite=args.overwrite)}")
    return 0
