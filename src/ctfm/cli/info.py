"""What this installation can do, without loading any weights: versions, conventions, class map."""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version

DESCRIPTION = __doc__
EXAMPLES = """  ctfm info
  ctfm info --json --list-classes
"""


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--list-classes", action="store_true", help="include the 117 TotalSegmentator v2 classes")


CORE = ("torch", "monai", "pytorch-ignite", "safetensors", "itk-io", "nibabel")
# pyproject.toml's extras: which features this installation has.
EXTRAS = {"idc": ("idc-index-data", "duckdb"), "retrieval": ("faiss-cpu",), "registration": ("itk-registration",),
          "dicom": ("highdicom",)}


def installed_version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def collect_info(list_classes: bool = False) -> dict:
    from ctfm import registry

    info = {
        "ctfm": version("ctfm"),
        "versions": {p: installed_version(p) for p in CORE},
        "extras": {extra: all(installed_version(p) for p in packages) for extra, packages in EXTRAS.items()},
        "encoder": {"class": "monai.networks.nets.segresnet_ds.SegResEncoder", **registry.ENCODER_CONFIG,
                    "norm": registry.ENCODER_NORM, "parameters": registry.ENCODER_NUM_PARAMETERS,
                    "embedding_dim": registry.EMBEDDING_DIM},
        "preprocessing": {"orientation": registry.ORIENTATION, "hu_range": [registry.HU_MIN, registry.HU_MAX],
                          "embedding_spacing_mm": list(registry.EMBEDDING_SPACING)},
        "released_layout": [registry.CONFIG_FILENAME, registry.WEIGHTS_FILENAME],
    }
    if list_classes:
        info["totalsegmentator_v2_classes"] = registry.totalsegmentator_classes()
    return info


def run(args) -> int:
    info = collect_info(args.list_classes)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if isinstance(value, dict) and key != "totalsegmentator_v2_classes":
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {v}")
        elif key == "totalsegmentator_v2_classes":
            print("totalsegmentator_v2_classes:")
            for k, v in value.items():
                print(f"  {k:3d} {v}")
        else:
            print(f"{key}: {value}")
    return 0
