"""Occlusion-based feature deviation (OFD): which regions of a scan shape its CT-FM embedding (paper, Figure 6e).

The paper's method (Methods, "Salient regions captured by the embeddings"): slide an 8 x 8 x 8
occluder over the volume, embed every occluded copy, and take the cosine distance to the embedding
of the unoccluded volume; a high distance marks a salient region. It runs on MONAI's
``OcclusionSensitivity`` (batched, with a progress bar), whose model here returns that cosine
distance. The occluder multiplies the region by 1 - Gaussian (MONAI's default, the authors'
choice), i.e. fades it to air. Writes the map as NIfTI on the scan's own grid and a PNG overlay.

Cost: one encoder pass of the whole volume per occluder position, ~(n / (8 * (1 - overlap)))^3 of
them; the authors used 3 mm isotropic voxels (the default here) to keep that tractable.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SALIENCY_SPACING = (3.0, 3.0, 3.0)  # the authors' LUNG1 saliency maps (scripts/generate_saliency_maps.py)


def cosine_distance_module(embedder, reference):
    """``x -> 1 - cos(embedding(x), reference)`` as a (B, 1) output: the 'class score' OcclusionSensitivity maps."""
    import torch.nn.functional as F
    from torch import nn

    class CosineDistance(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedder = embedder

        def forward(self, x):
            return (1 - F.cosine_similarity(self.embedder(x), reference[None], dim=1))[:, None]

    return CosineDistance().eval()


def occlusion_saliency(model, image, mask_size: int = 8, overlap: float = 0.25, batch_size: int = 8,
                       device="cpu", progress: bool = True) -> np.ndarray:
    """The OFD map ``(S, P, L)`` of a preprocessed volume ``(1, S, P, L)``: cosine distance when each region is occluded."""
    import torch
    from monai.visualize import OcclusionSensitivity

    from ctfm.analysis.scans import as_volume
    from ctfm.networks import CTFMEmbedder, find_encoder

    embedder = CTFMEmbedder(find_encoder(model)).to(device).eval()
    x = as_volume(image)[None].to(device)
    if min(x.shape[2:]) < mask_size:
        raise ValueError(f"the volume {tuple(x.shape[2:])} is smaller than the occluder ({mask_size}); use a finer --spacing.")
    with torch.no_grad():
        reference = embedder(x)[0]
        occlusion = OcclusionSensitivity(cosine_distance_module(embedder, reference), mask_size=mask_size, n_batch=batch_size,
                                         overlap=overlap, activate=False, verbose=progress)
        saliency, _ = occlusion(x)
    return saliency[0, 0].cpu().numpy()


def saliency_maps(inputs, weights, output_dir, spacing=SALIENCY_SPACING, mask_size=8, overlap=0.25, batch_size=8,
                  device="cpu", encoder=None) -> list[Path]:
    """Write ``<scan id>_saliency.nii.gz`` (the scan's grid) and ``.png`` per input; returns the NIfTI paths."""
    from ctfm.analysis.scans import Scan, save_map
    from ctfm.io import new_output_dir, scan_id, write_text_atomic
    from ctfm.validation import check_files_exist
    from ctfm.viz import save_heatmap_png
    from ctfm.weights import load_pretrained

    check_files_exist([{"image": p} for p in inputs], keys=("image",), where="the saliency inputs")
    out = new_output_dir(output_dir)
    model = encoder if encoder is not None else load_pretrained(weights)
    written = []
    for path in inputs:
        scan = Scan.read(path, tuple(spacing))
        heat = occlusion_saliency(model, scan.image, mask_size, overlap, batch_size, device)
        sid = scan_id(path)
        written.append(save_map(heat, scan.image, out / f"{sid}_saliency.nii.gz", like=scan.raw))
        peak = np.unravel_index(np.argmax(heat), heat.shape)
        save_heatmap_png(scan.image, heat, out / f"{sid}_saliency.png", centre=peak, spacing=spacing,
                         label="cosine distance to the unoccluded embedding", marker="most salient voxel",
                         title=f"{sid}: occlusion-based feature deviation ({mask_size}^3 occluder)")
        write_text_atomic(out / f"{sid}_saliency.json", json.dumps({
            "source": str(path), "peak_world_mm": np.round(scan.grid_to_world(peak), 2).tolist(),
            "max": float(heat.max()), "mean": float(heat.mean()), "mask_size": mask_size, "overlap": overlap,
            "spacing": list(spacing), "weights": str(weights)}, indent=2))
    return written
