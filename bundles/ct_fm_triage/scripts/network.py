"""The triage network: the CT-FM encoder with the authors' classification head.

CT-FM weights go in through ``ctfm.weights.load_ct_fm_weights`` (train.json's ``initialize``), which
also serves the windows-as-channels layout (``in_channels`` 4: the first kernel is expanded).
"""

from __future__ import annotations

import torch
from torch import nn

from ctfm.networks import CTFMEmbedder
from ctfm.registry import ENCODER_CONFIG


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
        width = self.embedder.out_features  # channels of the encoder's last stage: 512
        self.head = nn.Sequential(
            nn.Linear(width, width // 2), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(width // 2, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedder(x))

