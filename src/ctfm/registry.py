"""Every fixed name and number of CT-FM, as plain data. Imports nothing heavy.

One home for each convention (see ../../DESIGN notes in the repository README): the encoder
topology, the intensity and orientation conventions, and the TotalSegmentator v2 class map.
Bundles, tools and docs read these values from here, or are tested against them.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

# --- The backbone -----------------------------------------------------------------------------
# MONAI SegResEncoder with these arguments (norm stays MONAI's default, "batch").
# This dict is also, byte for byte, the released config.json of
# project-lighter/ct_fm_feature_extractor.
ENCODER_CONFIG: dict = {"spatial_dims": 3, "in_channels": 1, "init_filters": 32, "blocks_down": [1, 2, 2, 4, 4]}
ENCODER_NORM = "batch"
ENCODER_NUM_PARAMETERS = 77_760_992
ENCODER_NUM_TENSORS = 161
EMBEDDING_DIM = 512  # channels of the last encoder stage; the embedding is its global average

# --- Released-format folder -------------------------------------------------------------------
CONFIG_FILENAME = "config.json"
WEIGHTS_FILENAME = "model.safetensors"

# --- Canonical CT preprocessing ---------------------------------------------------------------
ORIENTATION = "SPL"  # array axis 0 toward Superior, 1 toward Posterior, 2 toward patient Left
HU_MIN, HU_MAX = -1024.0, 2048.0  # ScaleIntensityRange(HU_MIN, HU_MAX -> 0, 1, clip=True)
AIR_HU = -1024.0  # padding value before scaling
EMBEDDING_SPACING = (3.0, 1.0, 1.0)  # mm along S, P, L: pretraining and embeddings

# --- TotalSegmentator v2 "total" task ---------------------------------------------------------
TOTALSEG_NUM_CLASSES = 117


def resource(name: str):
    """A file shipped inside the package (``src/ctfm/resources/<name>``), found without walking up from a file."""
    return resources.files("ctfm").joinpath("resources", *name.split("/"))


@lru_cache(maxsize=None)
def totalsegmentator_classes() -> dict[int, str]:
    """Class id -> name of the 117 TotalSegmentator v2 "total" structures (background 0 excluded)."""
    text = resource("totalsegmentator_v2_total.json").read_text()
    return {int(k): v for k, v in json.loads(text)["classes"].items()}


@lru_cache(maxsize=None)
def totalsegmentator_ids() -> dict[str, int]:
    """Name -> class id, the inverse of :func:`totalsegmentator_classes`."""
    return {name: idx for idx, name in totalsegmentator_classes().items()}


@lru_cache(maxsize=None)
def label_groups() -> dict[str, list[str]]:
    """The paper's label groups (Figure 2f): group -> TotalSegmentator v2 structure names.

    TotalSegmentator's own five parts (organs, vertebrae, cardiac, muscles, ribs); every one of the
    117 structures is in exactly one group. The source of each group is in the resource's description.
    """
    groups = json.loads(resource("label_groups.json").read_text())["groups"]
    return {name: list(members) for name, members in groups.items()}
