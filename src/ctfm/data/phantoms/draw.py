"""The draws every phantom makes (size, spacing, orientation, noise, HU per tissue), the caller's
overrides, the final noise and texture, and the record of what was drawn."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ctfm.data.phantoms.geometry import _Canvas, _check_grid_args, _ornt
from ctfm.data.phantoms.tables import HU_RANGES, INPLANE_SPACING, ORIENTATIONS, SLICE_SPACING, TEXTURE_STD
from ctfm.registry import totalsegmentator_classes


def _render(c: _Canvas, rng, noise_std) -> np.ndarray:
    """Texture and noise on top of the painted HU, clipped to the scanner range and stored as int16."""
    texture = ndimage.gaussian_filter(rng.standard_normal(c.grid.shape, np.float32), sigma=2)
    texture *= TEXTURE_STD / max(float(texture.std()), 1e-6)
    noisy = c.hu + texture + rng.normal(0, noise_std, c.grid.shape).astype(np.float32)
    return np.clip(np.rint(noisy), -1024, 3071).astype(np.int16)


def _draw_common(rng, base_scale, scale_spread, noise_range):
    """The draws every phantom makes, always in this order, so a caller's override changes nothing else."""
    return {
        "scale": base_scale * rng.uniform(1 - scale_spread, 1 + scale_spread),
        "spacing": (rng.uniform(*SLICE_SPACING),) + (rng.uniform(*INPLANE_SPACING),) * 2,
        "orientation": ORIENTATIONS[rng.integers(len(ORIENTATIONS))],
        "noise_std": rng.uniform(*noise_range),
        "hu": {k: float(rng.uniform(lo, hi)) for k, (lo, hi) in HU_RANGES.items()},
        "world_offset": rng.uniform(-30, 30, 3) + np.array([0, 0, rng.uniform(-400, 100)]),  # table position
        "margin": rng.uniform(0.05, 0.2),
    }


def _overrides(drawn, scale, spacing, orientation, noise_std, shape):
    _check_grid_args(spacing, shape)
    if scale is not None:
        if scale <= 0:
            raise ValueError(f"scale must be positive (1.0 = adult size), got {scale!r}")
        drawn["scale"] = float(scale)
    if orientation is not None:
        _ornt(orientation)
        drawn["orientation"] = str(orientation).upper()
    if noise_std is not None:
        drawn["noise_std"] = float(noise_std)
    if spacing is None and shape is not None:
        drawn["spacing"] = None  # derived from the shape and the field of view
    elif spacing is not None:
        drawn["spacing"] = tuple(float(v) for v in spacing)
    return drawn


_HEAD_ONLY = ("scalp", "skull", "grey_matter", "white_matter", "bleed")


def _info(kind, seed, drawn, grid, **extra) -> dict:
    """What was drawn, JSON-ready; HU only of the tissues this kind of phantom holds."""
    tissues = ("csf",) + _HEAD_ONLY if kind == "head" else [t for t in HU_RANGES if t not in _HEAD_ONLY]
    return {
        "kind": kind,
        "seed": int(seed),
        "scale": round(drawn["scale"], 6),
        "spacing": [round(float(v), 6) for v in grid.spacing],
        "shape": list(grid.shape),
        "orientation": drawn["orientation"],
        "noise_std": round(drawn["noise_std"], 3),
        **extra,
        "hu": {k: round(drawn["hu"][k], 2) for k in tissues},
    }


def _classes(label: np.ndarray) -> dict[int, str]:
    names = totalsegmentator_classes()
    return {int(i): names[int(i)] for i in np.unique(label) if i}
