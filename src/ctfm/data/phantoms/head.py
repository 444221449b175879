"""Head phantoms: scalp, skull, brain (grey and white matter, CSF), with or without a bleed."""

from __future__ import annotations

import numpy as np

from ctfm.data.phantoms.draw import _classes, _draw_common, _info, _overrides, _render
from ctfm.data.phantoms.geometry import Phantom, _Canvas, _affine, _ellipsoid, _make_grid
from ctfm.data.phantoms.tables import HEAD_NOISE_STD, HEAD_SCALE, HEAD_STRUCTURES, _ts_ids


def _bleed_regions(c: _Canvas, rng, inner, brain_semi, intracranial, size: float = 1.0):
    """Up to three hyperdense regions: the first intraparenchymal, the others that or a subdural crescent.

    Every parameter is drawn whether or not it is used, so a seed's normal and bleeding heads are the
    same head and differ only inside the bleed.
    """
    g = c.grid
    count = int(rng.integers(1, 4))
    regions = []
    for k in range(3):
        kind = "intraparenchymal" if k == 0 or rng.uniform() < 0.5 else "subdural"
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        depth, semi = rng.uniform(0, 0.55), rng.uniform(8, 20, 3) * size
        lateral = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.7, 0.7), rng.choice([-1.0, 1.0])])
        thickness, cone = min(rng.uniform(0.1, 0.2) * size, 0.5), np.cos(np.radians(rng.uniform(35, 55)))
        if k >= count:
            continue
        if kind == "intraparenchymal":
            # At least ~one voxel across on every axis, so thick slices never drop a bleed.
            semi = np.maximum(semi, 0.6 * g.spacing / g.scale)
            regions.append((c.volume(_ellipsoid(g, direction * depth * brain_semi, semi)), kind))
        else:  # a crescent under the skull, over one side of the brain
            q = [x / r for x, r in zip(g.coords((slice(None),) * 3), inner)]  # inner skull at |q| = 1
            rho = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2)
            d = lateral / np.linalg.norm(lateral)
            facing = (q[0] * d[0] + q[1] * d[1] + q[2] * d[2]) >= cone * rho
            regions.append(((rho >= 1 - thickness) & facing & intracranial, kind))
    return regions


def make_head_phantom(
    seed: int = 0,
    *,
    bleed: bool = False,
    scale: float | None = None,
    spacing: tuple[float, float, float] | None = None,
    shape: tuple[int, int, int] | None = None,
    orientation: str | None = None,
    noise_std: float | None = None,
    bleed_size: float = 1.0,
) -> Phantom:
    """A CT-like head: scalp, skull, CSF, grey and white matter, ventricles; with ``bleed``, 1-3 bleeds.

    Bleeds are 60-90 HU: an intraparenchymal blob, plus possibly more blobs or a subdural crescent,
    always inside the intracranial space and labelled brain. ``label`` holds the TotalSegmentator ids
    of skull and brain; ``bleed`` is the bleed mask; ``abnormal`` is 1 with a bleed, 0 without. A
    seed's normal and bleeding heads differ only inside the bleed. Noise is 2-6 HU by default, as in
    head CT with a soft kernel. Bleed semi-axes are 8-20 mm (in adult-head millimetres, so scaled
    with the head) times ``bleed_size``; ``bleed_size=2`` gives large haematomas, which a tiny network
    learns to flag within a short CPU run. Other arguments as in :func:`make_body_phantom` (default
    scale 0.3 x U(0.85, 1.15)).
    """
    rng = np.random.default_rng(seed)
    drawn = _draw_common(rng, HEAD_SCALE, 0.15, HEAD_NOISE_STD)
    scalp = np.array([86.0, 101, 81]) * rng.uniform(0.95, 1.05, 3)  # half-height, -length, -width
    drawn = _overrides(drawn, scale, spacing, orientation, noise_std, shape)
    margin = 1 + drawn["margin"]
    extent = [(-55.0, scalp[0] * margin)] + [(-a * margin, a * margin) for a in scalp[1:]]  # cut at the skull base
    grid = _make_grid(extent, drawn["scale"], drawn["spacing"], shape)
    hu, ids = drawn["hu"], _ts_ids(HEAD_STRUCTURES)
    c = _Canvas(grid)
    skull, inner, brain = scalp - 6, scalp - 13, scalp - 15  # 6 mm scalp, 7 mm bone, 2 mm CSF
    c.paint(_ellipsoid(grid, (0, 0, 0), scalp), hu["scalp"])
    c.paint(_ellipsoid(grid, (0, 0, 0), skull), hu["skull"], ids["skull"])
    intracranial = c.volume(_ellipsoid(grid, (0, 0, 0), inner))
    c.paint(_ellipsoid(grid, (0, 0, 0), inner), hu["csf"])
    c.paint(_ellipsoid(grid, (0, 0, 0), brain), hu["grey_matter"], ids["brain"])
    c.paint(_ellipsoid(grid, (0, 0, 0), brain * 0.72), hu["white_matter"], ids["brain"])
    for sign in (1, -1):  # lateral ventricles
        c.paint(_ellipsoid(grid, (12, -5, sign * 13), (10, 28, 6)), hu["csf"], ids["brain"])
    c.paint(_ellipsoid(grid, (-5, 5, 0), (12, 10, 2.5)), hu["csf"], ids["brain"])  # third ventricle

    mask = np.zeros(grid.shape, bool)
    kinds = []
    for region, kind in _bleed_regions(c, rng, inner, brain, intracranial, bleed_size):
        if bleed:
            region &= intracranial & ((c.label == ids["brain"]) | (c.label == 0))
            c.hu[region], c.label[region] = hu["bleed"], ids["brain"]
            mask |= region
            kinds.append(kind)
    image = _render(c, rng, drawn["noise_std"])
    info = _info("head", seed, drawn, grid, bleed=bool(bleed), bleed_kinds=kinds)
    return Phantom(image=image, label=c.label, affine=_affine(grid, drawn["world_offset"]),
                   orientation=drawn["orientation"], classes=_classes(c.label), info=info,
                   bleed=mask.astype(np.uint8), abnormal=int(bool(bleed)))
