"""The served segmentation model: ``<bundle>/models/model.pt``, written once from the weights the user passed."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from ctfm.weights import load_encoder_weights, load_network_weights, save_model_state

logger = logging.getLogger(__name__)


def prepare_segmentation_model(bundle: Path, ct_fm_weights: str | None = None, seg_weights: str | None = None) -> Path:
    """``<bundle>/models/model.pt``: kept when it exists (the last model trained or installed), else the bundle's
    own ``network_def`` filled from ``seg_weights`` (a trained network: bundle ``model.pt`` or the released
    whole-body folder) or from ``ct_fm_weights`` (the CT-FM encoder; the decoder starts fresh, seed 0)."""
    bundle = Path(bundle)
    model_file = bundle / "models" / "model.pt"
    given = seg_weights or ct_fm_weights
    if model_file.exists():
        if given:
            logger.warning("Serving the existing %s; %s is not used. To serve it instead, move %s away.",
                           model_file, given, model_file)
        return model_file
    if not given:
        raise ValueError(
            f"{model_file} does not exist, so there is no model to serve. Start the server with "
            "--conf ct_fm_weights <CT-FM encoder folder (config.json + model.safetensors)> to fine-tune from CT-FM, "
            "or --conf seg_weights <bundle model.pt | released whole-body folder> to serve a trained network."
        )
    config = ConfigParser()
    config.read_config(bundle / "configs" / "inference.json")
    config["bundle_root"] = str(bundle)
    sys.path.insert(0, str(bundle))  # network_def may name the bundle's scripts
    try:
        torch.manual_seed(0)
        network = config.get_parsed_content("network_def")
    finally:
        sys.path.remove(str(bundle))
    if seg_weights:
        load_network_weights(network, seg_weights)
    else:
        load_encoder_weights(network, ct_fm_weights)
    logger.info("Wrote %s from %s (%s)", save_model_state(network, model_file), given,
                "trained network" if seg_weights else "CT-FM encoder, fresh decoder")
    return model_file
