"""PCA concept maps: patch embeddings of two or more scans -> 3 principal components -> CIELAB colours (Figure 6d).

The paper's method (Methods, "PCA analysis of learned semantic concepts"): embed patches of each
scan (24 x 64 x 64 voxels in the paper), run one PCA over the patches of all scans, keep three
components, drop the background by thresholding the first component (oriented so that it grows
with the body fraction of the patch), and colour the foreground in CIELAB: component 1 is the
lightness, 2 and 3 the a (red-green) and b (blue-yellow) axes. Same colour = similar concept
across scans. Writes one PNG per scan (CT underneath) and the components as NIfTI.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DEFAULT_BOX = (32, 64, 64)  # the paper's 24 x 64 x 64 is --method windows --box 24 64 64
DEFAULT_STRIDE = (8, 16, 16)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIELAB (D65) -> sRGB in 0..1, ``(..., 3)``; the standard formulas (matplotlib has no converter)."""
    L, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
    fy = (L + 16) / 116
    f = np.stack([fy + a / 500, fy, fy - b / 200], axis=-1)
    xyz = np.where(f > 6 / 29, f**3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * np.array([0.95047, 1.0, 1.08883])
    m = np.array([[3.2406, -1.5372, -0.4986], [-0.9689, 1.8758, 0.0415], [0.0557, -0.2040, 1.0570]])
    rgb = xyz @ m.T
    rgb = np.where(rgb > 0.0031308, 1.055 * np.clip(rgb, 0, None) ** (1 / 2.4) - 0.055, 12.92 * rgb)
    return np.clip(rgb, 0, 1)


def components_to_lab(pcs: np.ndarray) -> np.ndarray:
    """Three components -> L* 25..90 (component 1), a*/b* -80..80 (components 2, 3), each scaled by its range."""
    lo, hi = pcs.min(0), pcs.max(0)
    unit = (pcs - lo) / np.maximum(hi - lo, 1e-12)  # 0..1 per component
    return np.stack([25 + 65 * unit[:, 0], 160 * unit[:, 1] - 80, 160 * unit[:, 2] - 80], axis=1)


def pca_maps(inputs, weights, output_dir, box=DEFAULT_BOX, stride=DEFAULT_STRIDE, method="pooled", spacing=None,
             background_threshold=0.0, batch_size=8, device="cpu", encoder=None) -> list[Path]:
    """Embed, PCA, colour and draw every scan; returns the PNG paths.

    Writes ``pca_concepts.png`` (one row of three views per scan), ``<scan id>_pc<1..3>.nii.gz`` on
    each scan's own grid and ``pca.json``. Patches whose oriented first component is below
    ``background_threshold`` (in units of its standard deviation) are background and not coloured.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    from ctfm.analysis.patch_embeddings import patch_embeddings, window_body_fraction, windows_to_voxels
    from ctfm.analysis.scans import Scan, save_map
    from ctfm.io import new_output_dir, scan_id, write_text_atomic
    from ctfm.registry import EMBEDDING_SPACING
    from ctfm.validation import check_files_exist
    from ctfm.viz import label_views, orthogonal_slices, to_hu, view_aspects
    from ctfm.weights import load_pretrained

    if len(inputs) < 2:
        raise ValueError("PCA concept maps compare scans: give two or more.")
    spacing = tuple(spacing or EMBEDDING_SPACING)
    check_files_exist([{"image": p} for p in inputs], keys=("image",), where="the PCA inputs")
    out = new_output_dir(output_dir)
    model = encoder if encoder is not None else load_pretrained(weights)
    scans, embs, starts, body = [], [], [], []
    for path in inputs:
        scan = Scan.read(path, spacing)
        emb, st = patch_embeddings(model, scan.image, box, stride, method=method, batch_size=batch_size, device=device)
        body.append(window_body_fraction(scan.image, st, box))
        scans.append(scan), embs.append(emb), starts.append(st)
    allemb = np.concatenate(embs)
    z = (allemb - allemb.mean(0)) / np.maximum(allemb.std(0), 1e-6)  # z-score per channel (the authors')
    pcs = PCA(n_components=3, random_state=0).fit_transform(z)
    pcs /= np.maximum(pcs[:, :1].std(), 1e-12)
    if np.corrcoef(pcs[:, 0], np.concatenate(body))[0, 1] < 0:
        pcs[:, 0] *= -1  # orient: component 1 grows with the body, so background is its low end
    foreground = pcs[:, 0] >= background_threshold
    rgb = np.zeros((len(pcs), 3), dtype=np.float32)
    rgb[foreground] = lab_to_rgb(components_to_lab(pcs[foreground]))
    aspects = view_aspects(spacing)
    fig, axes = plt.subplots(len(scans), 3, figsize=(15, 5 * len(scans)), constrained_layout=True, squeeze=False)
    offset = 0
    for row, (path, scan, st) in enumerate(zip(inputs, scans, starts)):
        n = len(st)
        shape = scan.image.shape[1:]
        colour = windows_to_voxels(rgb[offset:offset + n], st, box, shape)  # (3, S, P, L)
        alpha = windows_to_voxels(foreground[offset:offset + n].astype(np.float32), st, box, shape)[0]
        comps = windows_to_voxels(pcs[offset:offset + n], st, box, shape)
        offset += n
        sid = scan_id(path)
        for c in range(3):
            save_map(comps[c], scan.image, out / f"{sid}_pc{c + 1}.nii.gz", like=scan.raw)
        middle = [n // 2 for n in shape]
        views = orthogonal_slices(to_hu(scan.image), middle)
        rgb_views = orthogonal_slices(np.moveaxis(colour, 0, -1), middle)
        alpha_views = orthogonal_slices(alpha, middle)
        for ax, view in zip(axes[row], views):
            ax.imshow(views[view], cmap="gray", vmin=-400, vmax=600, aspect=aspects[view])
            ax.imshow(np.dstack([rgb_views[view], 0.6 * alpha_views[view]]), aspect=aspects[view])
            ax.set_title(f"{sid}: {view}")
        label_views(axes[row])
    fig.suptitle("PCA of CT-FM patch embeddings in CIELAB (L*: PC1, a*: PC2, b*: PC3); same colour = similar "
                 "concept across scans; background (low PC1) not coloured")
    png = out / "pca_concepts.png"
    fig.savefig(png, dpi=80)
    plt.close(fig)
    write_text_atomic(out / "pca.json", json.dumps({
        "inputs": [str(p) for p in inputs], "box": list(box), "stride": list(stride), "method": method,
        "foreground_patches": int(foreground.sum()), "patches": int(len(pcs))}, indent=2))
    return [png]
