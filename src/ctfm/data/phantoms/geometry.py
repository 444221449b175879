"""Geometry: the phantom result, its NIfTI storage in any orientation, and a voxel grid in template
millimetres with the shapes (ellipsoids, cylinders, boxes, tubes) painted on a canvas."""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

from ctfm.data.phantoms.tables import AIR_HU, ORIENTATIONS
from ctfm.registry import ORIENTATION


@dataclass
class Phantom:
    """A phantom in the canonical SPL frame, with what the writers need to store it in any orientation."""

    image: np.ndarray  # int16 HU, canonical SPL array
    label: np.ndarray  # uint8 TotalSegmentator v2 ids, 0 = background
    affine: np.ndarray  # 4x4, canonical voxel index -> RAS+ world mm
    orientation: str  # axis codes the writers store it in, e.g. "LPS"
    classes: dict[int, str]  # id -> name of the structures present in ``label``
    info: dict  # what was drawn: seed, scale, spacing, field of view, noise, HU per tissue
    body: np.ndarray | None = None  # uint8 body outline (body phantoms)
    bleed: np.ndarray | None = None  # uint8 bleed mask (head phantoms; all zero when normal)
    abnormal: int | None = None  # head phantoms: 1 with a bleed, 0 without

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along S, P, L."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    def to_nifti(self, which: str = "image") -> nib.Nifti1Image:
        """``image``, ``label``, ``body`` or ``bleed`` as a NIfTI image stored in :attr:`orientation`."""
        array = getattr(self, which, None) if which in ("image", "label", "body", "bleed") else None
        if array is None:
            have = [k for k in ("image", "label", "body", "bleed") if getattr(self, k) is not None]
            raise ValueError(f"this {self.info.get('kind', '')} phantom has no {which!r}; it has {have}")
        return to_nifti(array, self.affine, self.orientation)


def _ornt(axcodes: str) -> np.ndarray:
    """nibabel orientation of axis codes such as "LPS", or a ValueError that says what is valid."""
    code = str(axcodes).upper()
    axes = sorted("LRPAIS".index(c) // 2 for c in code if c in "LRPAIS")
    if len(code) != 3 or axes != [0, 1, 2]:
        raise ValueError(
            f"orientation {axcodes!r} is not a 3-letter axis code: use one letter of L/R, one of P/A and one "
            f"of I/S, each naming the direction its array axis points to, e.g. {', '.join(ORIENTATIONS)}"
        )
    return nib.orientations.axcodes2ornt(tuple(code))


def to_nifti(array: np.ndarray, affine: np.ndarray, orientation: str) -> nib.Nifti1Image:
    """A canonical SPL array (3-D, or 4-D with extra trailing axes) stored in ``orientation``.

    The voxels are permuted and flipped and the affine is changed to match, so every voxel keeps its
    world position.
    """
    ornt = nib.orientations.ornt_transform(_ornt(ORIENTATION), _ornt(orientation))
    data = np.ascontiguousarray(nib.orientations.apply_orientation(array, ornt))
    new_affine = affine @ nib.orientations.inv_ornt_aff(ornt, array.shape[:3])
    img = nib.Nifti1Image(data, new_affine)
    # Both forms, code 1 (scanner): ITK and nibabel then read the same geometry.
    img.set_qform(new_affine, code=1)
    img.set_sform(new_affine, code=1)
    img.header.set_xyzt_units("mm")
    return img


class _Grid:
    """Voxel centres of the canonical SPL array, in template mm (physical mm divided by ``scale``)."""

    def __init__(self, shape, spacing, origin, scale):
        self.shape = tuple(int(n) for n in shape)
        self.spacing = np.asarray(spacing, float)  # physical mm along S, P, L
        self.origin = np.asarray(origin, float)  # physical mm of voxel 0 in the patient frame
        self.scale = float(scale)
        self.axes = [(self.origin[a] + np.arange(self.shape[a]) * self.spacing[a]) / scale for a in range(3)]

    def region(self, lo, hi):
        """Slices of the voxels whose centres lie within [lo, hi] on every axis; None when empty."""
        slices = []
        for ax, a, b in zip(self.axes, lo, hi):
            i0, i1 = np.searchsorted(ax, a, "left"), np.searchsorted(ax, b, "right")
            if i0 >= i1:
                return None
            slices.append(slice(int(i0), int(i1)))
        return tuple(slices)

    def coords(self, sl):
        """Open-grid S, P, L coordinates (template mm) of a region, ready to broadcast."""
        s, p, l = (ax[k] for ax, k in zip(self.axes, sl))
        return s[:, None, None], p[None, :, None], l[None, None, :]

    def index_of(self, points):
        """Nearest voxel index of points given in template mm (N x 3)."""
        return np.rint((points * self.scale - self.origin) / self.spacing).astype(int)


def _make_grid(extent, scale, spacing, shape) -> _Grid:
    """A grid covering ``extent`` (template mm per axis), from a spacing, a shape or both."""
    lo, hi = np.array(extent, float).T * scale
    size, centre = hi - lo, (hi + lo) / 2
    if shape is None:
        shape = np.maximum(np.ceil(size / np.asarray(spacing, float)).astype(int), 2)
    elif spacing is None:
        spacing = size / np.asarray(shape, float)
    spacing, shape = np.asarray(spacing, float), np.asarray(shape, int)
    return _Grid(shape, spacing, centre - (shape - 1) / 2 * spacing, scale)


def _check_grid_args(spacing, shape) -> None:
    for name, value in (("spacing", spacing), ("shape", shape)):
        if value is not None and (len(value) != 3 or min(value) <= 0):
            raise ValueError(f"{name} must be 3 positive numbers along S, P, L (the SPL array axes), got {value!r}")


def _affine(grid: _Grid, world_offset) -> np.ndarray:
    """Canonical voxel -> RAS+ mm. Patient Left is -x (R), Posterior is -y (A), Superior is +z (S)."""
    sp, o = grid.spacing, grid.origin
    affine = np.eye(4)
    affine[:3, :3] = [[0, 0, -sp[2]], [0, -sp[1], 0], [sp[0], 0, 0]]
    affine[:3, 3] = np.array([-o[2], -o[1], o[0]]) + world_offset
    return affine


# Shapes return (slices, mask) in template mm; the mask may broadcast over the region; None = outside.
def _ellipsoid(grid, centre, semi):
    c, r = np.asarray(centre, float), np.asarray(semi, float)
    sl = grid.region(c - r, c + r)
    if sl is None:
        return None
    s, p, l = grid.coords(sl)
    return sl, ((s - c[0]) / r[0]) ** 2 + ((p - c[1]) / r[1]) ** 2 + ((l - c[2]) / r[2]) ** 2 <= 1


def _cylinder(grid, centre_pl, semi_pl, s_range):
    """An elliptic cylinder along S."""
    (cp, cl), (ap, al) = centre_pl, semi_pl
    sl = grid.region((s_range[0], cp - ap, cl - al), (s_range[1], cp + ap, cl + al))
    if sl is None:
        return None
    _, p, l = grid.coords(sl)
    return sl, ((p - cp) / ap) ** 2 + ((l - cl) / al) ** 2 <= 1


def _box(grid, lo, hi):
    sl = grid.region(lo, hi)
    return None if sl is None else (sl, np.ones((1, 1, 1), bool))


class _Canvas:
    """HU, label and bone arrays; later paint covers earlier paint, as organs push each other aside."""

    def __init__(self, grid: _Grid, background: float = AIR_HU):
        self.grid = grid
        self.hu = np.full(grid.shape, background, np.float32)
        self.label = np.zeros(grid.shape, np.uint8)
        self.bone = np.zeros(grid.shape, bool)  # gets a cortical rim at the end

    def paint(self, shape, hu, label=0, within=None, bone=False) -> None:
        """Paint a shape, optionally only where ``within`` is true; ``label`` may be an array over the shape."""
        if shape is None:
            return
        sl, mask = shape
        mask = np.broadcast_to(mask, self.hu[sl].shape)
        if within is not None:
            mask = mask & within[sl]
        self.hu[sl][mask] = hu
        self.label[sl][mask] = np.broadcast_to(label, mask.shape)[mask] if np.ndim(label) else label
        self.bone[sl][mask] = bone

    def volume(self, shape) -> np.ndarray:
        """A shape as a full-size boolean volume."""
        out = np.zeros(self.grid.shape, bool)
        if shape is not None:
            out[shape[0]] = np.broadcast_to(shape[1], out[shape[0]].shape)
        return out


def _tubes(canvas: _Canvas, tubes) -> None:
    """Paint tubes around polylines: (points N x 3 template mm, radius, hu, label, bone).

    The centre lines are rasterised and grown by one distance transform, so a thin tube stays
    continuous even across 5 mm slices (as partial volume would show it), and all tubes cost one pass.
    """
    grid = canvas.grid
    step = 0.5 * grid.spacing.min() / grid.scale
    seeds = np.full(grid.shape, -1, np.int32)
    for t, (points, *_rest) in enumerate(tubes):
        idx = grid.index_of(_densify(points, step))
        idx = idx[np.all((idx >= 0) & (idx < grid.shape), axis=1)]
        seeds[tuple(idx.T)] = t
    if not (seeds >= 0).any():
        return
    dist, nearest = ndimage.distance_transform_edt(seeds < 0, sampling=grid.spacing / grid.scale,
                                                   return_indices=True)
    owner = seeds[tuple(nearest)]
    radius, hu, label, bone = (np.array([tube[k] for tube in tubes]) for k in (1, 2, 3, 4))
    inside = dist <= radius[owner]
    which = owner[inside]
    canvas.hu[inside], canvas.label[inside], canvas.bone[inside] = hu[which], label[which], bone[which]


def _densify(points, step) -> np.ndarray:
    """Points along a polyline, no further apart than ``step``."""
    pts = np.asarray(points, float)
    out = [pts[:1]]
    for a, b in zip(pts[:-1], pts[1:]):
        n = max(1, int(np.ceil(np.linalg.norm(b - a) / step)))
        out.append(a + np.linspace(0, 1, n + 1)[1:, None] * (b - a))
    return np.concatenate(out)


def _jitter(rng, centre, semi, shift=4.0, spread=0.08):
    """An organ's centre moved by up to ``shift`` mm and its semi-axes scaled by 1 +- ``spread``."""
    return np.add(centre, rng.uniform(-shift, shift, 3)), np.multiply(semi, rng.uniform(1 - spread, 1 + spread, 3))
