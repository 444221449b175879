"""Figures a person can read: orthogonal slices of an SPL volume with a label overlay or a heat map."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from ctfm.registry import HU_MAX, HU_MIN  # noqa: E402

MAX_LEGEND = 14  # structures named in the legend (the largest ones)


def _as_numpy(x) -> np.ndarray:
    x = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    return x[0] if x.ndim == 4 else x


def to_hu(scaled) -> np.ndarray:
    """Hounsfield units ``(S, P, L)`` of CT-FM's 0..1 scaled intensities (the inverse of the HU scaling)."""
    return _as_numpy(scaled).astype(np.float32) * (HU_MAX - HU_MIN) + HU_MIN


def view_aspects(spacing: Sequence[float]) -> dict[str, float]:
    """Pixel aspect ratio of each view of :func:`orthogonal_slices` for voxels of ``spacing`` mm (S, P, L)."""
    return {"axial": spacing[1] / spacing[2], "coronal": spacing[0] / spacing[2], "sagittal": spacing[0] / spacing[1]}


def label_views(axes) -> None:
    """No ticks; the patient directions under the axial, coronal and sagittal views."""
    for ax, (left, right) in zip(axes, (("R", "L"), ("R", "L"), ("A", "P"))):
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"{left}  \u2190  \u2192  {right}")


def orthogonal_slices(volume: np.ndarray, center: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Axial, coronal and sagittal slices of an SPL array, oriented for radiological display.

    Axial: anterior up, patient right on the image left. Coronal: superior up, patient right on
    the left. Sagittal: superior up, anterior on the left.
    """
    s, p, l = center if center is not None else [n // 2 for n in volume.shape]
    return {
        "axial": volume[s, :, :],
        "coronal": volume[::-1, p, :],
        "sagittal": volume[::-1, :, l],
    }


def save_orthogonal_overlay(
    image,
    path: str | os.PathLike,
    label=None,
    class_names: Mapping[int, str] | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    title: str = "",
    scaled: bool = True,
    window: tuple[float, float] = (-400.0, 600.0),
    center: Sequence[int] | None = None,
) -> Path:
    """Write a PNG of three orthogonal mid-slices of an SPL ``image`` with an optional ``label`` overlay.

    ``image`` and ``label`` are (S, P, L) arrays (or (1, S, P, L) tensors) on the same grid;
    ``spacing`` (mm, S/P/L) sets the aspect ratio so anatomy is not stretched. ``scaled`` says the
    image holds CT-FM's 0..1 intensities, shown back in HU through the display ``window``.
    """
    img = _as_numpy(image).astype(np.float32)
    if scaled:
        img = to_hu(img)
    lab = _as_numpy(label).astype(np.int32) if label is not None else None
    if center is None and lab is not None and lab.any():
        center = [int(round(c)) for c in np.argwhere(lab > 0).mean(axis=0)]  # cut through the labelled anatomy
    img_slices = orthogonal_slices(img, center)
    lab_slices = orthogonal_slices(lab, center) if lab is not None else {}
    ids = [int(i) for i in np.unique(lab) if i > 0] if lab is not None else []
    palette = plt.get_cmap("tab20", max(len(ids), 1))
    colours = {i: palette(n % 20) for n, i in enumerate(ids)}
    aspects = view_aspects(spacing)

    fig, axes = plt.subplots(1, 3, figsize=(15, 5.6), constrained_layout=True)
    shown = None
    for ax, (view, sl) in zip(axes, img_slices.items()):
        shown = ax.imshow(sl, cmap="gray", vmin=window[0], vmax=window[1], aspect=aspects[view])
        if view in lab_slices and ids:
            rgba = np.zeros(lab_slices[view].shape + (4,), dtype=np.float32)
            for i in ids:
                rgba[lab_slices[view] == i] = (*colours[i][:3], 0.45)
            ax.imshow(rgba, aspect=aspects[view])
        ax.set_title(view)
    label_views(axes)
    fig.colorbar(shown, ax=axes, shrink=0.8, label=f"HU (window {window[0]:g}..{window[1]:g})")
    if ids:
        sizes = {i: int((lab == i).sum()) for i in ids}
        top = sorted(ids, key=lambda i: -sizes[i])[:MAX_LEGEND]
        names = class_names or {}
        handles = [Patch(color=colours[i], label=f"{i}: {names.get(i, 'label')}") for i in sorted(top)]
        more = f" (+{len(ids) - len(top)} more)" if len(ids) > len(top) else ""
        fig.legend(handles=handles, loc="outside lower center", ncol=min(7, len(handles)), fontsize=8, title=f"labels{more}")
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path



def save_heatmap_png(image, heat, path, centre=None, spacing=(1, 1, 1), title="", label="", cmap="inferno",
                     vmin=None, vmax=None, alpha=0.5, window=(-400.0, 600.0), marker="best match") -> Path:
    """Three orthogonal slices through ``centre`` of an SPL grid: the CT (0..1 scaled) in grey, ``heat`` in colour.

    ``centre`` (default: the middle) is marked with a cross and named by ``marker``; ``label`` names
    the colour bar. ``image`` and ``heat`` lie on the same grid (``image`` may carry a channel).
    """
    heat = np.asarray(heat, dtype=np.float32)
    ct = to_hu(image).reshape(heat.shape)
    centre = [int(round(c)) for c in (centre if centre is not None else np.array(heat.shape) // 2)]
    centre = [min(max(c, 0), n - 1) for c, n in zip(centre, heat.shape)]
    vmin = float(np.nanmin(heat)) if vmin is None else vmin
    vmax = float(np.nanmax(heat)) if vmax is None else vmax
    aspects = view_aspects(spacing)
    marks = {"axial": (centre[2], centre[1]), "coronal": (centre[2], heat.shape[0] - 1 - centre[0]),
             "sagittal": (centre[1], heat.shape[0] - 1 - centre[0])}
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.6), constrained_layout=True)
    shown = None
    for ax, (view, ct_slice), heat_slice in zip(axes, orthogonal_slices(ct, centre).items(),
                                                orthogonal_slices(heat, centre).values()):
        ax.imshow(ct_slice, cmap="gray", vmin=window[0], vmax=window[1], aspect=aspects[view])
        shown = ax.imshow(heat_slice, cmap=cmap, vmin=vmin, vmax=vmax, alpha=alpha, aspect=aspects[view])
        ax.plot(*marks[view], marker="+", color="cyan", markersize=18, mew=2)
        ax.set_title(view)
    label_views(axes)
    fig.colorbar(shown, ax=axes, shrink=0.8, label=label)
    fig.suptitle(f"{title}   (+: {marker}; CT window {window[0]:g}..{window[1]:g} HU)")
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
