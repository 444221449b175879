"""Check CT-FM encoder weights in any supported form and write them in the released layout.

Reads a released-format folder, a .safetensors file, a SegResNetDS state dict, a Lightning/lighter
checkpoint or a MONAI bundle, takes the SegResEncoder part strictly (missing, unexpected or
mis-shaped keys stop it with a diagnosis), and writes config.json + model.safetensors that every
part of the project, lighter_zoo and huggingface_hub read.

With --segmentation it writes the whole segmentation network instead (a trained bundle models/model.pt ->
the layout of the released whole-body folder, which `ctfm segment --weights` and lighter_zoo's
SegResNet.from_pretrained read): the reverse of `ctfm segmentation-model`. The network's size (filters,
blocks, outputs, deep-supervision depth) is read from the file itself.
"""

from __future__ import annotations

DESCRIPTION = __doc__
EXAMPLES = """  ctfm convert-weights --input epoch=449-step=225000.ckpt --output ct_fm_feature_extractor/
  ctfm convert-weights --input bundles/ct_fm_segmentation/models/model.pt --output encoder/ --prefix encoder.
  ctfm convert-weights --segmentation --input bundles/ct_fm_segmentation/models/model.pt --output whole_body/
"""


def add_arguments(parser) -> None:
    parser.add_argument("--input", required=True, help="weights file or folder in any supported form")
    parser.add_argument("--output", required=True, help="folder to write (config.json + model.safetensors)")
    parser.add_argument("--prefix", default=None, help="key prefix of the encoder when the file holds several")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--segmentation", action="store_true",
                        help="write the whole segmentation network (SegResNetDS) as a whole-body folder")


def convert_weights(input, output, prefix=None, overwrite=False):
    from ctfm.networks import build_encoder
    from ctfm.weights import load_encoder_weights, save_pretrained

    encoder = load_encoder_weights(build_encoder(), input, prefix=prefix)
    return save_pretrained(encoder, output, overwrite=overwrite)


def run(args) -> int:
    if args.segmentation:
        from ctfm.weights import convert_segmentation_weights

        folder = convert_segmentation_weights(input=args.input, output=args.output, overwrite=args.overwrite)
    else:
        folder = convert_weights(input=args.input, output=args.output, prefix=args.prefix, overwrite=args.overwrite)
    print(f"wrote {folder}/config.json and {folder}/model.safetensors")
    return 0
