"""Pretraining criteria on view pairs grouped by scan.

Every criterion takes ``projection`` of shape ``(S, M, 2, D)``: S scans, M patches per scan, two
augmented views per patch. The intra-sample criteria are computed inside each scan and averaged
over scans, so patches of other scans never act as negatives (CT-FM, paper Methods).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F
from monai.utils import look_up_option
from torch import nn

# framework -> what it is; the one list the config's `framework` id is checked against.
FRAMEWORKS = {
    "simclr_intrasample": "SimCLR with negatives from the same scan only (CT-FM)",
    "simclr": "classic SimCLR: every other patch of the batch, on every GPU, is a negative (ablation)",
    "simsiam_intrasample": "SimSiam, criterion averaged inside each scan (ablation)",
    "vicreg_intrasample": "VICReg, criterion computed inside each scan (ablation)",
}


def check_framework(name: str) -> str:
    """``name`` if it is a known framework, else an error listing the valid ones (with a did-you-mean)."""
    return look_up_option(name, tuple(FRAMEWORKS))  # raises ValueError naming the valid choices


class IntraSampleNTXentLoss(nn.Module):
    """NT-Xent inside each scan, averaged over scans.

    ``symmetric=False`` is the authors' loss (``loss/intrasample_ntxent_loss.py``): the anchor is view 0
    of each patch, its positive view 1, its negatives both views of every other patch of the same
    scan (2M-2 of them). ``symmetric=True`` is the paper's equation, L = 1/(2M) sum_m (l_m12 + l_m21):
    both views act as anchors. With ``S = 1`` and all patches of the batch in one group, the symmetric
    form is classic SimCLR (MONAI's ``ContrastiveLoss``).
    """

    def __init__(self, temperature: float = 0.1, symmetric: bool = False):
        super().__init__()
        self.temperature, self.symmetric = temperature, symmetric

    def forward(self, projection: torch.Tensor, prediction: torch.Tensor | None = None) -> torch.Tensor:
        s, m = projection.shape[:2]
        z = F.normalize(projection.float(), dim=-1).reshape(s, 2 * m, -1)  # rows: patch0 view0, patch0 view1, ...
        anchors = torch.arange(0, 2 * m, 1 if self.symmetric else 2, device=z.device)
        logits = z[:, anchors] @ z.transpose(1, 2) / self.temperature  # (S, anchors, 2M)
        self_mask = anchors[:, None] == torch.arange(2 * m, device=z.device)[None]
        logits = logits.masked_fill(self_mask, float("-inf"))  # an anchor is never its own negative
        positives = (anchors ^ 1).expand(s, -1)  # the other view of the same patch
        # cross_entropy's mean over (scan, anchor) equals the mean over scans of per-scan means (equal M).
        return F.cross_entropy(logits.flatten(0, 1), positives.flatten())


def ntxent_against(anchors: torch.Tensor, candidates: torch.Tensor, offset: int, temperature: float) -> torch.Tensor:
    """Symmetric NT-Xent of normalised ``anchors`` (rows: patch 0 view 0, patch 0 view 1, ...) against every row
    of ``candidates``, where ``anchors[i]`` is ``candidates[offset + i]``: its positive is the other view of its
    patch, every other candidate a negative. ``offset`` is even (whole pairs), so the pair of row k is k ^ 1."""
    own = torch.arange(anchors.shape[0], device=anchors.device) + offset
    logits = anchors @ candidates.T / temperature
    logits = logits.masked_fill(own[:, None] == torch.arange(candidates.shape[0], device=anchors.device)[None], float("-inf"))
    return F.cross_entropy(logits, own ^ 1)


class CrossSampleNTXentLoss(nn.Module):
    """Classic SimCLR, the authors' cross-sample ablation (lightly's ``NTXentLoss(gather_distributed=True)``): every
    other view of the batch is a negative, and under DDP the views of every process too.

    Each process scores its own anchors against the views gathered from all processes (with gradients), and DDP
    averages the gradients, so the loss is the one of the whole global batch.
    """

    def __init__(self, temperature: float = 0.1, gather_distributed: bool = True):
        super().__init__()
        self.temperature, self.gather_distributed = temperature, gather_distributed

    def forward(self, projection: torch.Tensor, prediction: torch.Tensor | None = None) -> torch.Tensor:
        z = F.normalize(projection.float(), dim=-1).reshape(-1, projection.shape[-1])  # (scan, crop, view) rows
        candidates, offset = z, 0
        if self.gather_distributed and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            candidates = torch.cat(dist_nn.all_gather(z))  # differentiable: negatives from every GPU
            offset = dist.get_rank() * z.shape[0]
        return ntxent_against(z, candidates, offset, self.temperature)


class IntraSampleSimSiamLoss(nn.Module):
    """SimSiam: -cos(prediction of one view, stop-gradient projection of the other), symmetrised,
    averaged over the patches of each scan and then over scans."""

    def forward(self, projection: torch.Tensor, prediction: torch.Tensor | None = None) -> torch.Tensor:
        if prediction is None:
            raise ValueError("SimSiam needs the predictor output; the network head of simsiam_intrasample provides it.")
        z, p = projection.detach(), prediction
        cos = F.cosine_similarity(p[:, :, 0], z[:, :, 1], dim=-1) + F.cosine_similarity(p[:, :, 1], z[:, :, 0], dim=-1)
        return -(cos / 2).mean(dim=1).mean()


class IntraSampleVICRegLoss(nn.Module):
    """VICReg (Bardes et al. 2022) with its default weights, computed among the patches of each scan
    (variance and covariance over those M patches), averaged over scans."""

    def __init__(self, invariance: float = 25.0, variance: float = 25.0, covariance: float = 1.0, eps: float = 1e-4):
        super().__init__()
        self.weights, self.eps = (invariance, variance, covariance), eps

    def forward(self, projection: torch.Tensor, prediction: torch.Tensor | None = None) -> torch.Tensor:
        s, m, _, d = projection.shape
        z = projection.float()
        invariance = F.mse_loss(z[:, :, 0], z[:, :, 1])
        zc = (z - z.mean(dim=1, keepdim=True)).permute(0, 2, 1, 3)  # (S, view, M, D), centred per scan
        var = zc.pow(2).sum(dim=2) / (m - 1)  # (S, view, D)
        variance = F.relu(1 - torch.sqrt(var + self.eps)).mean()
        # Off-diagonal covariance energy via the M x M Gram matrix: ||C||_F = ||Zc Zc^T||_F / (M-1), cheap for D >> M.
        gram = zc @ zc.transpose(-1, -2) / (m - 1)
        covariance = ((gram.pow(2).sum(dim=(-1, -2)) - var.pow(2).sum(dim=-1)) / d).mean()
        a, b, c = self.weights
        return a * invariance + b * variance + c * covariance


def build_criterion(framework: str, temperature: float = 0.1, symmetric: bool = False) -> nn.Module:
    """The criterion of a framework (see :data:`FRAMEWORKS`)."""
    framework = check_framework(framework)
    if framework == "simclr_intrasample":
        return IntraSampleNTXentLoss(temperature, symmetric)
    if framework == "simclr":
        return CrossSampleNTXentLoss(temperature)
    if framework == "simsiam_intrasample":
        return IntraSampleSimSiamLoss()
    return IntraSampleVICRegLoss()


@torch.no_grad()
def pair_similarities(projection: torch.Tensor) -> tuple[float, float]:
    """Mean cosine similarity of the two views of a patch (positive) and of different patches of the
    same scan (negative). Training should pull the first up and keep the second low."""
    s, m = projection.shape[:2]
    z = F.normalize(projection.float(), dim=-1).reshape(s, 2 * m, -1)
    sim = z @ z.transpose(1, 2)
    patch = torch.arange(2 * m, device=z.device) // 2
    same_patch = patch[:, None] == patch[None]
    positive = sim[:, torch.arange(0, 2 * m, 2), torch.arange(1, 2 * m, 2)].mean()
    negative = sim[:, ~same_patch].mean() if m > 1 else torch.tensor(float("nan"))
    return float(positive), float(negative)


@torch.no_grad()
def embedding_std(embedding: torch.Tensor) -> float:
    """Per-dimension standard deviation of L2-normalised embeddings, averaged: about 1/sqrt(D) when
    healthy, near 0 when the representation has collapsed to one point."""
    return float(F.normalize(embedding.float().flatten(0, -2), dim=-1).std(dim=0).mean())
