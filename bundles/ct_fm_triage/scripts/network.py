"""The triage network: the CT-FM encoder with the authors' classification head, and its weight loading."""

from __future__ import annotations

import os

import torch
from torch import nn

from ctfm.networks import CTFMEmbedder, build_encoder, find_encoder
from ctfm.registry import ENCODER_CONFIG
from ctfm.weights import load_encoder_weights


class TriageClassifier(nn.Module):
    """SegResEncoder -> AdaptiveAvgPool3d(1) -> Linear(512, 256) -> ReLU -> Linear(256, 1): one logit per scan.

    Args:
        in_channels: 1 for concatenated windows (the CT-FM encoder as released), 4 for windows as channels.
        init_filters: 32 is the CT-FM encoder; smaller values only for quick experiments (no CT-FM weights fit).
        dropout: before the last layer; 0 is the authors' head. MONAI Label's epistemic scoring sets it.
    """

    def __init__(self, in_channels: int = 1, init_filters: int = ENCODER_CONFIG["init_filters"], dropout: float = 0.0):
        super().__init__()
        self.embedder = CTFMEmbedder(in_channels=in_channels, init_filters=init_filters)
        width = init_filters * 2 ** (len(ENCODER_CONFIG["blocks_down"]) - 1)  # channels of the last stage: 512
        self.head = nn.Sequential(
            nn.Linear(width, width // 2), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(width // 2, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedder(x))


def load_ct_fm_weights(model: nn.Module, weights: str | os.PathLike | None) -> nn.Module:
    """Load CT-FM encoder weights (any form ``ctfm.weights`` reads) into ``model``, strictly; ``None`` keeps it random.

    With windows as channels the first convolution takes 4 channels while CT-FM's takes 1: its kernel
    is repeated over the channels and divided by their number, so four equal windows give the
    released encoder's response.
    """
    if not weights:
        return model
    encoder = find_encoder(model)
    channels = encoder.conv_init.in_channels
    if channels == 1:
        return load_encoder_weights(model, weights)
    single = load_encoder_weights(build_encoder(init_filters=encoder.conv_init.out_channels), weights)
    state = single.state_dict()
    state["conv_init.weight"] = state["conv_init.weight"].repeat(1, channels, 1, 1, 1) / channels
    encoder.load_state_dict(state, strict=True)
    return model
