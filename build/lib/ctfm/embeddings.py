"""512-d CT-FM embeddings of preprocessed volumes."""

from __future__ import annotations

import torch
from torch import nn

from ctfm.networks import CTFMEmbedder, find_encoder


@torch.no_grad()
def embed_volume(model: nn.Module, image: torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    """Embedding of one preprocessed volume ``(1, S, P, L)`` (or a batch ``(B, 1, S, P, L)``) -> ``(512,)`` or ``(B, 512)``.

    ``model`` is a :class:`~ctfm.networks.CTFMEmbedder` or anything holding one CT-FM encoder; it is
    run in ``eval()`` mode so BatchNorm uses its stored statistics. The whole volume goes through
    the encoder at once; the last stage is averaged over space, as in the released model card.
    """
    embedder = model if isinstance(model, CTFMEmbedder) else CTFMEmbedder(find_encoder(model))
    embedder = embedder.to(device).eval()
    image = image.as_tensor() if hasattr(image, "as_tensor") else image  # drop MONAI metadata
    single = image.ndim == 4
    batch = (image[None] if single else image).to(device=device, dtype=torch.float32)
    out = embedder(batch).cpu()
    return out[0] if single else out
