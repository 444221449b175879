"""The pretraining network: CT-FM encoder -> global average pool -> 512 -> framework head.

``forward(x)`` returns the ``(B, 512)`` embedding, so the bundle's ``network_def`` passes
``verify_net_in_out`` and everything downstream sees the same vector; ``forward(x, project=True)``
also returns the head's outputs for the loss.
"""

from __future__ import annotations

import torch
from torch import nn

from ctfm.networks import CTFMEmbedder
from ctfm.registry import EMBEDDING_DIM

from scripts.losses import check_framework


def mlp(*widths: int, batch_norm: bool, last_norm: bool = False) -> nn.Sequential:
    """Linear layers of the given widths with ReLU (and BatchNorm1d) between them."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        last = i == len(widths) - 2
        layers.append(nn.Linear(a, b, bias=not batch_norm or (last and not last_norm)))
        if batch_norm and (not last or last_norm):
            layers.append(nn.BatchNorm1d(b, affine=not last))
        if not last:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


# The authors' VICReg expander (lightly's BarlowTwinsProjectionHead(512, 8192, 8192), models/frameworks/vicreg.py).
VICREG_WIDTH = 8192


def build_projection_head(framework: str, width: int | None = None) -> nn.Module:
    """Head of each framework, as the authors built it; ``width`` overrides the VICReg expander's (default 8192)."""
    framework = check_framework(framework)
    if framework.startswith("simclr"):
        # The authors' lightly SimCLRProjectionHead(512, 256, 128, batch_norm=False).
        return mlp(EMBEDDING_DIM, 256, 128, batch_norm=False)
    if framework == "simsiam_intrasample":
        return SimSiamHead()
    width = width or VICREG_WIDTH
    return mlp(EMBEDDING_DIM, width, width, width, batch_norm=True)  # 3 layers, BN + ReLU between


class SimSiamHead(nn.Module):
    """SimSiam's projector (3 layers, BN) and predictor (bottleneck 512); returns both."""

    def __init__(self, dim: int = 2048, bottleneck: int = 512):
        super().__init__()
        self.projector = mlp(EMBEDDING_DIM, dim, dim, dim, batch_norm=True, last_norm=True)
        self.predictor = mlp(dim, bottleneck, dim, batch_norm=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.projector(x)
        return z, self.predictor(z)


class PretrainingNetwork(nn.Module):
    """Encoder + pooling (:class:`ctfm.networks.CTFMEmbedder`) and the framework's head.

    State-dict keys: ``embedder.encoder.*`` (the CT-FM encoder), ``head.*``.
    """

    def __init__(self, framework: str = "simclr_intrasample", head_width: int | None = None):
        super().__init__()
        self.framework = check_framework(framework)
        self.embedder = CTFMEmbedder()
        self.head = build_projection_head(framework, head_width)

    def forward(self, x: torch.Tensor, project: bool = False):
        embedding = self.embedder(x)
        if not project:
            return embedding
        out = self.head(embedding)
        projection, prediction = out if isinstance(out, tuple) else (out, None)
        return embedding, projection, prediction
