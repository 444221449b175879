"""CT-like phantoms with known ground truth: bodies, heads with and without bleeds, broken inputs.

The anatomy is drawn in the canonical CT-FM frame, an array in SPL order (axis 0 toward Superior,
1 toward Posterior, 2 toward patient Left), from ellipsoids, cylinders, boxes and tubes whose sizes
are adult millimetres times a ``scale``. A structure therefore keeps its physical size whatever the
spacing. The writers store each volume in a random orientation with the matching NIfTI (RAS+)
affine, so MONAI ``LoadImage`` + ``Orientation(axcodes="SPL")`` gives back the canonical array.

The default phantoms are miniatures: a quarter-size adult body and a 0.3-size head, sampled at
clinical spacing (in-plane 0.6-1.5 mm, slices 1-5 mm). A body then has about 36 x 70 x 100 voxels (S x P x L)
on average, from 12 to 160 per axis, and takes about 0.1 s on one core, which keeps tests on two CPU
cores fast. Pass ``shape`` or ``spacing`` for a given size, and ``scale=1.0`` (with a coarser
``spacing``) for an adult.

Labels are TotalSegmentator v2 "total" class ids looked up by name in :mod:`ctfm.registry`. The
body outline, which is not one of the 117 classes, comes as a separate mask, and so does a head
phantom's bleed. Every random draw comes from ``numpy.random.default_rng(seed)``. The same seed
gives the same arrays, and through the writers the same bytes (gzip without a timestamp).

    >>> ph = make_body_phantom(seed=0)
    >>> ph.image.dtype, ph.label.dtype, ph.orientation     # int16 HU, uint8 ids, e.g. 'LPS'
    >>> nib.save(ph.to_nifti("image"), "ct.nii.gz")        # stored in ph.orientation
    >>> write_body_phantoms("phantoms/body", num=4, seed=0)  # imagesTr/, labelsTr/, masksTr/, datalist.json
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ctfm import __version__
from ctfm.registry import ORIENTATION, totalsegmentator_classes, totalsegmentator_ids

__all__ = [
    "BODY_STRUCTURES",
    "DEFECTS",
    "FIELDS_OF_VIEW",
    "HEAD_STRUCTURES",
    "HU_RANGES",
    "ORIENTATIONS",
    "Phantom",
    "make_body_phantom",
    "make_head_phantom",
    "to_nifti",
    "write_body_phantoms",
    "write_defective_inputs",
    "write_head_phantoms",
]

# --- What gets drawn --------------------------------------------------------------------------
BODY_SCALE = 0.25  # default body: a quarter-size adult, times U(0.8, 1.2)
HEAD_SCALE = 0.30  # default head: 0.3 of an adult head, times U(0.85, 1.15)
SLICE_SPACING = (1.0, 5.0)  # mm along S
INPLANE_SPACING = (0.6, 1.5)  # mm along P and L (square pixels)
ORIENTATIONS = ("RAS", "LPS", "LAS", "SPL", "PIR", "RPI", "ASL", "ILP")
# Superior-inferior extent of each field of view, template mm (0 = dome of the diaphragm).
FIELDS_OF_VIEW: dict[str, tuple[float, float]] = {
    "thorax": (-60.0, 290.0),
    "abdomen": (-230.0, 20.0),
    "thorax_abdomen": (-230.0, 290.0),
}
AIR_HU = -1000.0
# Tissue -> (low, high): each phantom draws one value per tissue uniformly from its range. The ranges
# sit a little inside the (soft tissue 30..60, contrast 150..300, bleed 60..90), so a small
# structure's mean stays inside them after noise and texture.
HU_RANGES: dict[str, tuple[float, float]] = {
    "lung": (-870.0, -830.0),
    "airway": (-1000.0, -960.0),
    "fat": (-110.0, -90.0),
    "muscle": (40.0, 55.0),
    "liver": (48.0, 56.0),
    "spleen": (40.0, 50.0),
    "kidney": (35.0, 45.0),
    "heart": (38.0, 50.0),  # myocardium; the blood pool inside takes the contrast value
    "stomach": (35.0, 42.0),
    "small_bowel": (35.0, 45.0),
    "esophagus": (35.0, 50.0),
    "spinal_cord": (35.0, 42.0),
    "csf": (2.0, 10.0),
    "contrast": (160.0, 290.0),  # arterial phase: aorta, iliac arteries, heart blood pool
    "cartilage": (100.0, 200.0),
    "cancellous_bone": (400.0, 550.0),
    "cortical_bone": (1000.0, 1400.0),
    "skull": (1100.0, 1500.0),
    "scalp": (20.0, 40.0),
    "grey_matter": (35.0, 40.0),
    "white_matter": (30.0, 33.0),
    "bleed": (63.0, 87.0),
}
BODY_NOISE_STD = (10.0, 20.0)
HEAD_NOISE_STD = (2.0, 6.0)  # head CT uses soft kernels; a 30 HU bleed must stand out of the noise
TEXTURE_STD = 2.5  # smooth low-frequency variation, HU

# Vertebrae from C7 down to S1 with their heights (template mm); C7 starts at +290.
_SPINE = (
    [("vertebrae_C7", 18.0)]
    + [(f"vertebrae_T{i}", 26.0) for i in range(1, 13)]
    + [(f"vertebrae_L{i}", 34.0) for i in range(1, 6)]
    + [("vertebrae_S1", 30.0)]
)
_LOBES = ("lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right", "lung_middle_lobe_right",
          "lung_lower_lobe_right")
_RIBS = tuple(f"rib_{side}_{k}" for side in ("left", "right") for k in range(1, 13))
# Every TotalSegmentator structure a body phantom can hold, in painting order.
BODY_STRUCTURES: tuple[str, ...] = (
    _LOBES
    + ("trachea", "esophagus", "stomach", "small_bowel", "liver", "spleen", "kidney_left", "kidney_right", "heart")
    + ("aorta", "iliac_artery_left", "iliac_artery_right")
    + _RIBS
    + ("costal_cartilages",)
    + tuple(name for name, _ in _SPINE)
    + ("spinal_cord", "sternum")
)
HEAD_STRUCTURES: tuple[str, ...] = ("skull", "brain")

# Each defective input and its defect, as the manifest and the error tests describe it.
DEFECTS: dict[str, str] = {
    "truncated": "a valid .nii.gz cut in half: the header reads, the voxel data ends early",
    "empty": "a zero-byte file named .nii.gz",
    "not_nifti": "a text file named .nii.gz",
    "two_d": "a 2-D image (one axial slice of a CT)",
    "four_d": "a 4-D image (three phases of one CT)",
    "constant": "a 3-D volume in which every voxel is 0",
    "mr_like": "MR-like intensities: 0..4000, no air at -1000",
    "uint8_0_255": "a CT squeezed into 0..255 and stored as uint8, as exported from PNG slices",
    "label_other_grid_image": "a valid CT phantom: the image that goes with label_other_grid",
    "label_other_grid": "a label map on another grid than its image (half the resolution, shifted origin)",
}
DATALIST = "datalist.json"
DEFECTS_MANIFEST = "defects.json"


def _ts_ids(names) -> dict[str, int]:
    """Ids of TotalSegmentator names, with a clear error for a name the class map does not hold."""
    ids = totalsegmentator_ids()
    unknown = [n for n in names if n not in ids]
    if unknown:
        raise ValueError(f"not TotalSegmentator v2 'total' class names: {unknown}; see ctfm.registry")
    return {n: ids[n] for n in names}


# --- The result -------------------------------------------------------------------------------
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


# --- Geometry: a voxel grid in template millimetres --------------------------------------------
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


# --- Body -------------------------------------------------------------------------------------
def _spine_levels():
    """(name, top, bottom) of each vertebra, template mm: C7 starts at +290, S1 ends at -240."""
    levels, top = [], 290.0
    for name, height in _SPINE:
        levels.append((name, top, top - height))
        top -= height
    return levels


def _paint_trunk(c: _Canvas, a_l, a_p, hu):
    """Fat under the skin, muscle inside it, fat between the abdominal organs. Returns body and cage."""
    everywhere = (-1e4, 1e4)
    body = c.volume(_cylinder(c.grid, (0, 0), (a_p, a_l), everywhere))
    c.paint((tuple(slice(None) for _ in range(3)), body), hu["fat"])
    c.paint(_cylinder(c.grid, (0, 0), (a_p - 15, a_l - 15), everywhere), hu["muscle"])
    cage = c.volume(_cylinder(c.grid, (0, 0), (a_p - 25, a_l - 25), everywhere))  # inside ribs and muscles
    paraspinal = c.volume(_cylinder(c.grid, (70, 0), (35, 45), everywhere))  # psoas and back muscles stay muscle
    c.paint(_box(c.grid, (-1e4, -1e4, -1e4), (-10, 1e4, 1e4)), hu["fat"], within=cage & ~paraspinal)
    return body, cage


def _paint_lungs(c: _Canvas, rng, hu, ids, cage) -> None:
    """Two lungs split into the five TotalSegmentator lobes by an oblique and a horizontal fissure."""
    for side, sign in (("left", 1), ("right", -1)):
        centre, semi = _jitter(rng, (125, 5, sign * 80), (145, 85, 62))
        oblique, horizontal = 105 + rng.uniform(-10, 10), 110 + rng.uniform(-10, 10)
        shape = _ellipsoid(c.grid, centre, semi)
        if shape is None:
            continue
        s, p, _ = c.grid.coords(shape[0])
        upper = s > oblique + 0.9 * p  # the oblique fissure runs high at the back, low at the front
        if side == "left":
            lobe = np.where(upper, ids["lung_upper_lobe_left"], ids["lung_lower_lobe_left"])
        else:
            top = np.where(s > horizontal, ids["lung_upper_lobe_right"], ids["lung_middle_lobe_right"])
            lobe = np.where(upper, top, ids["lung_lower_lobe_right"])
        c.paint(shape, hu["lung"], label=lobe, within=cage)


# Organs: (TotalSegmentator name, centre S/P/L, semi-axes, tissue), in painting order.
_ORGANS = (
    ("stomach", (-40, -30, 55), (55, 40, 45), "stomach"),
    ("liver", (-45, -5, -65), (80, 90, 90), "liver"),
    ("spleen", (-50, 35, 95), (50, 35, 28), "spleen"),
    ("kidney_left", (-110, 55, 75), (50, 22, 28), "kidney"),
    ("kidney_right", (-125, 55, -75), (50, 22, 28), "kidney"),
    ("heart", (60, -35, 20), (55, 50, 60), "heart"),
)


def _paint_organs(c: _Canvas, rng, hu, ids, cage) -> None:
    g = c.grid
    c.paint(_cylinder(g, (-5, -6), (8, 8), (175, 1e4)), hu["airway"], ids["trachea"], within=cage)
    c.paint(_cylinder(g, (25, 2), (7, 6), (-10, 1e4)), hu["esophagus"], ids["esophagus"], within=cage)
    for name, centre, semi, tissue in _ORGANS:
        centre, semi = _jitter(rng, centre, semi)
        c.paint(_ellipsoid(g, centre, semi), hu[tissue], ids[name], within=cage)
        if name == "stomach":  # loops of small bowel fill the lower abdomen
            for _ in range(6):
                loop = rng.uniform((-215, -75, -85), (-115, 5, 85)), rng.uniform(22, 38, 3)
                c.paint(_ellipsoid(g, *loop), hu["small_bowel"], ids["small_bowel"], within=cage)
        if name == "heart":  # contrast-filled chambers inside the myocardium
            c.paint(_ellipsoid(g, centre, semi * 0.65), hu["contrast"], ids["heart"], within=c.label == ids["heart"])


def _rib_tubes(a_l, a_p, levels, ids, hu, rng):
    """Ribs 1-12 on each side, and the costal cartilages of ribs 1-10, as tubes.

    A rib leaves its vertebra at the back, follows an ellipse inside the chest wall and drops about
    55 mm on its way to the front. Ribs 1-3 are narrower, as the chest is at the top.
    """
    centres = {name: (top + bottom) / 2 for name, top, bottom in levels}
    B = a_p - 20
    p_c = 92 - B  # the rib ellipse's centre: its back touches the transverse processes at p = 92
    tubes, front_ends = [], {}
    for k in range(1, 13):
        A = (a_l - 20) * {1: 0.6, 2: 0.78, 3: 0.9}.get(k, 1.0)
        phi0 = np.arcsin(30 / A)  # where the rib leaves the transverse process, 30 mm off the midline
        s0, drop = centres[f"vertebrae_T{k}"] + rng.uniform(-3, 3), 55 + rng.uniform(-8, 8)
        if k <= 7:  # true ribs: cartilage reaches the sternum
            phi_end = np.pi - np.arcsin(18 / A)
            phi_bone = phi_end - 0.45
        elif k <= 10:  # false ribs: cartilage reaches the costal margin
            phi_end = np.pi - np.arcsin(45 / A)
            phi_bone = phi_end - 0.55
        else:  # floating ribs end free at the side
            phi_end = phi_bone = {11: 1.7, 12: 1.45}[k]
        for side, sign in (("left", 1), ("right", -1)):

            def path(a, b, A=A, phi0=phi0, s0=s0, drop=drop, sign=sign):
                phi = np.linspace(a, b, max(3, int((b - a) / 0.08) + 1))
                s = s0 - drop * (phi - phi0) / (np.pi - phi0)
                return np.stack([s, p_c + B * np.cos(phi), sign * A * np.sin(phi)], axis=1)

            tubes.append((path(phi0, phi_bone), 5.0, hu["cancellous_bone"], ids[f"rib_{side}_{k}"], True))
            if phi_end > phi_bone:
                cartilage = path(phi_bone, phi_end)
                tubes.append((cartilage, 4.0, hu["cartilage"], ids["costal_cartilages"], False))
                front_ends[k] = cartilage[-1]
    return tubes, front_ends


def _aorta_tubes(ids, hu):
    """Ascending aorta, arch, descending aorta and the two common iliac arteries, contrast-filled."""
    start, end = np.array([190.0, -35, 6]), np.array([190.0, 22, 26])  # arch: left of the trachea
    mid, radius = (start + end) / 2, np.linalg.norm(end - start) / 2
    t = np.linspace(0, np.pi, 13)[:, None]
    arch = mid - radius * np.cos(t) * (end - start) / (2 * radius) + radius * np.sin(t) * np.array([1.0, 0, 0])
    aorta = np.concatenate([[[95.0, -35, 6]], arch, [[0.0, 24, 20], [-160.0, 18, 8]]])
    tubes = [(aorta, 11.0, hu["contrast"], ids["aorta"], False)]
    for side, sign in (("left", 1), ("right", -1)):
        iliac = [[-160.0, 18, 8], [-240.0, 30, sign * 50]]
        tubes.append((iliac, 6.0, hu["contrast"], ids[f"iliac_artery_{side}"], False))
    return tubes


def _paint_spine(c: _Canvas, levels, hu, ids, body) -> None:
    """Vertebral bodies, neural arches and processes by level, the canal with its CSF and the cord."""
    g, canal_p = c.grid, 82.0
    c.paint(_cylinder(g, (canal_p, 0), (8, 8), (-1e4, 1e4)), hu["csf"], within=body)
    for name, top, bottom in levels:
        semi_p, semi_l = {"C": (12, 16), "T": (16, 20), "L": (20, 25), "S": (20, 28)}[name[10]]
        s_range = (bottom + 3, top - 3)  # 6 mm discs between the levels
        paint = dict(hu=hu["cancellous_bone"], label=ids[name], within=body, bone=True)
        c.paint(_cylinder(g, (canal_p - 10 - semi_p, 0), (semi_p, semi_l), s_range), **paint)
        ring = _cylinder(g, (canal_p, 0), (14, 14), s_range)
        if ring is not None:
            _, p, l = g.coords(ring[0])
            c.paint((ring[0], ring[1] & (((p - canal_p) / 8) ** 2 + (l / 8) ** 2 > 1)), **paint)
        c.paint(_box(g, (s_range[0], canal_p + 12, -3), (s_range[1], canal_p + 30, 3)), **paint)  # spinous
        for sign in (1, -1):  # transverse processes
            lo, hi = sorted((sign * 8, sign * 32))
            c.paint(_box(g, (s_range[0], canal_p - 4, lo), (s_range[1], canal_p + 4, hi)), **paint)
    c.paint(_cylinder(g, (canal_p, 0), (5, 5), (-1e4, 1e4)), hu["spinal_cord"], ids["spinal_cord"], within=body)


def _finish_bone(c: _Canvas, hu) -> None:
    """A cortical rim one voxel thick around every bone (cut faces at the field's edge stay open)."""
    core = ndimage.binary_erosion(c.bone, border_value=1)
    c.hu[c.bone & ~core] = hu["cortical_bone"]


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


def make_body_phantom(
    seed: int = 0,
    *,
    scale: float | None = None,
    spacing: tuple[float, float, float] | None = None,
    shape: tuple[int, int, int] | None = None,
    orientation: str | None = None,
    fov: str | None = None,
    noise_std: float | None = None,
) -> Phantom:
    """A CT-like trunk with TotalSegmentator v2 labels, in the canonical SPL frame.

    Holds (within the field of view) the body outline, fat, muscle, five lung lobes, trachea,
    esophagus, heart with contrast-filled chambers, aorta and iliac arteries (contrast), liver,
    spleen, stomach, small bowel, kidneys, vertebrae C7-S1 with the spinal canal and cord, ribs
    1-12 on each side, costal cartilages and sternum. See ``HU_RANGES`` for the values.

    Args:
        seed: everything is drawn from ``numpy.random.default_rng(seed)``.
        scale: size relative to an adult (default: 0.25 x U(0.8, 1.2), a miniature).
        spacing: mm along S, P, L (default: slices U(1, 5), in-plane U(0.6, 1.5)).
        shape: voxels along S, P, L. With ``spacing``, the grid is centred on the field of view;
            alone, the spacing is chosen so that the field of view fits.
        orientation: axis codes to store it in (default: one of ``ORIENTATIONS``).
        fov: "thorax", "abdomen" or "thorax_abdomen" (default: one of them).
        noise_std: Gaussian noise in HU (default U(10, 20)).

    Other arguments change only what they name: the anatomy of a seed is the same at any spacing.
    """
    rng = np.random.default_rng(seed)
    drawn = _draw_common(rng, BODY_SCALE, 0.2, BODY_NOISE_STD)
    drawn["fov"] = tuple(FIELDS_OF_VIEW)[rng.integers(len(FIELDS_OF_VIEW))]
    a_l, a_p = 170 * rng.uniform(0.95, 1.05), 115 * rng.uniform(0.95, 1.05)  # body half-width and half-depth
    body_shift = rng.uniform(-0.05, 0.05, 2) * (a_p, a_l)  # the patient is never quite centred
    drawn = _overrides(drawn, scale, spacing, orientation, noise_std, shape)
    if fov is not None:
        if fov not in FIELDS_OF_VIEW:
            raise ValueError(f"fov must be one of {', '.join(FIELDS_OF_VIEW)}, got {fov!r}")
        drawn["fov"] = fov

    margin = 1 + drawn["margin"]
    in_plane = [(-a * margin + d, a * margin + d) for a, d in zip((a_p, a_l), body_shift)]
    extent = [FIELDS_OF_VIEW[drawn["fov"]]] + in_plane
    grid = _make_grid(extent, drawn["scale"], drawn["spacing"], shape)
    hu, ids, levels = drawn["hu"], _ts_ids(BODY_STRUCTURES), _spine_levels()
    c = _Canvas(grid)
    body, cage = _paint_trunk(c, a_l, a_p, hu)
    _paint_lungs(c, rng, hu, ids, cage)
    _paint_organs(c, rng, hu, ids, cage)
    ribs, front_ends = _rib_tubes(a_l, a_p, levels, ids, hu, rng)
    _tubes(c, _aorta_tubes(ids, hu) + ribs)
    c.label[~body], c.hu[~body], c.bone[~body] = 0, AIR_HU, False  # tubes never leave the body
    _paint_spine(c, levels, hu, ids, body)
    sternum_s = (front_ends[7][0] - 10, front_ends[1][0] + 15)
    c.paint(_cylinder(grid, (front_ends[1][1], 0), (6, 15), sternum_s), hu["cancellous_bone"], ids["sternum"],
            within=body, bone=True)
    _finish_bone(c, hu)
    image = _render(c, rng, drawn["noise_std"])
    info = _info("body", seed, drawn, grid, fov=drawn["fov"])
    return Phantom(image=image, label=c.label, affine=_affine(grid, drawn["world_offset"]),
                   orientation=drawn["orientation"], classes=_classes(c.label), info=info,
                   body=body.astype(np.uint8))


# --- Head -------------------------------------------------------------------------------------
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


# --- Writing: deterministic bytes, never a silent overwrite -------------------------------------
def _gz(raw: bytes) -> bytes:
    return gzip.compress(raw, compresslevel=6, mtime=0)  # no timestamp: the same seed, the same bytes


def _nifti_bytes(img: nib.Nifti1Image) -> bytes:
    return _gz(img.to_bytes())


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


def _same_content(path: Path, data: bytes) -> bool:
    """Whether a file already holds ``data`` (for .gz, the same uncompressed content counts)."""
    if not path.is_file():
        return False
    existing = path.read_bytes()
    if existing == data:
        return True
    if path.name.endswith(".gz"):
        try:
            return gzip.decompress(existing) == gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            return False
    return False


def _write_files(root: Path, produce: Callable[[], Iterator[tuple[str, bytes]]], overwrite: bool, what: str):
    """Write what ``produce()`` yields (relative path, bytes) under ``root``.

    If ``root`` already holds files, everything is checked first: a file that differs from what
    would be written stops the run before anything is written, unless ``overwrite``. Identical files
    are left alone, so a second run with the same seed does nothing. Each file is written to a
    temporary name and renamed, so a killed run never leaves a half-written file that looks valid.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} is a file, not a folder: pass an output folder")
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        differing, missing = [], 0
        for rel, data in produce():
            path = root / rel
            if path.exists() and not _same_content(path, data):
                differing.append(rel)
            missing += not path.exists()
        if differing:
            shown = ", ".join(differing[:3]) + (f" and {len(differing) - 3} more" if len(differing) > 3 else "")
            raise FileExistsError(
                f"{root} already holds {len(differing)} file(s) that differ from what {what} would write "
                f"({shown}); nothing was written. Pass overwrite=True (ctfm make-phantoms --overwrite) to "
                f"replace them, or choose an empty output folder."
            )
        if not missing:
            return
    for rel, data in produce():
        path = root / rel
        if _same_content(path, data):
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        tmp.write_bytes(data)
        os.replace(tmp, path)


def _case_seed(seed: int, index: int) -> int:
    """Independent seed of case ``index``: a case does not change when ``num`` does."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _check_seed_num(seed, num=1) -> None:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(num, (int, np.integer)) or num < 1:
        raise ValueError(f"num must be a positive integer, got {num!r}")


def _generator(function: str, **params) -> dict:
    return {"function": f"ctfm.data.phantoms.{function}", "ctfm_version": __version__, **params}


def write_body_phantoms(
    output_dir: str | os.PathLike,
    num: int = 4,
    seed: int = 0,
    *,
    overwrite: bool = False,
    validation_fraction: float = 0.25,
    scale: float | None = None,
    spacing: tuple[float, float, float] | None = None,
    shape: tuple[int, int, int] | None = None,
    orientation: str | None = None,
    fov: str | None = None,
) -> Path:
    """Write ``num`` body phantoms and a decathlon-style datalist; returns the datalist's path.

    Layout: ``imagesTr/body_NNN.nii.gz`` (int16 HU), ``labelsTr/body_NNN.nii.gz`` (uint8
    TotalSegmentator ids), ``masksTr/body_NNN.nii.gz`` (body outline) and ``datalist.json`` with
    "training"/"validation" lists of {"image", "label", "body_mask"} relative to ``output_dir``,
    "labels" (id -> name of every structure the generator draws) and "cases" (what was drawn for
    each case). The last ``validation_fraction`` of the cases (at least one when ``num`` >= 2) form
    the validation list. Other arguments as in :func:`make_body_phantom`, the same for every case.
    """
    _check_seed_num(seed, num)
    n_val = min(num - 1, max(1, round(num * validation_fraction))) if num >= 2 else 0
    names = [f"body_{i:03d}" for i in range(num)]
    ids = _ts_ids(BODY_STRUCTURES)

    def produce():
        entries, cases = [], {}
        for i, name in enumerate(names):
            ph = make_body_phantom(_case_seed(seed, i), scale=scale, spacing=spacing, shape=shape,
                                   orientation=orientation, fov=fov)
            entry = {"image": f"imagesTr/{name}.nii.gz", "label": f"labelsTr/{name}.nii.gz",
                     "body_mask": f"masksTr/{name}.nii.gz"}
            for key, which in (("image", "image"), ("label", "label"), ("body_mask", "body")):
                yield entry[key], _nifti_bytes(ph.to_nifti(which))
            entries.append(entry)
            cases[name] = {**ph.info, "structures": sorted(ph.classes)}
        datalist = {
            "name": "ctfm body phantoms",
            "description": "CT-like trunks with TotalSegmentator v2 labels; images int16 HU, labels uint8 ids",
            "tensorImageSize": "3D",
            "modality": {"0": "CT"},
            "labels": {"0": "background", **{str(i): n for n, i in sorted(ids.items(), key=lambda kv: kv[1])}},
            "numTraining": num - n_val,
            "training": entries[: num - n_val],
            "validation": entries[num - n_val:],
            "generator": _generator("write_body_phantoms", seed=seed, num=num, scale=scale, spacing=spacing,
                                    shape=shape, orientation=orientation, fov=fov),
            "cases": cases,
        }
        yield DATALIST, _json_bytes(datalist)

    _write_files(Path(output_dir), produce, overwrite, f"write_body_phantoms(seed={seed}, num={num})")
    return Path(output_dir) / DATALIST


def _split_counts(n: int) -> tuple[int, int, int]:
    """Training, validation, testing counts of one class: ~60/20/20, each list non-empty from 3 cases."""
    if n >= 3:
        held = max(1, round(0.2 * n))
        return n - 2 * held, held, held
    return (n, 0, 0) if n < 2 else (1, 1, 0)


def write_head_phantoms(
    output_dir: str | os.PathLike,
    num: int = 8,
    seed: int = 0,
    *,
    bleed_fraction: float = 0.5,
    overwrite: bool = False,
    scale: float | None = None,
    spacing: tuple[float, float, float] | None = None,
    shape: tuple[int, int, int] | None = None,
    orientation: str | None = None,
    bleed_size: float = 1.0,
) -> Path:
    """Write ``num`` head phantoms for normal/abnormal triage and a datalist; returns the datalist's path.

    ``round(num * bleed_fraction)`` heads have a bleed (label 1), the others none (label 0); cases
    are shuffled, then split ~60/20/20 into "training"/"validation"/"testing" class by class, so
    every list has the same class balance. Entries are {"image", "label": 0 or 1, "bleed_mask"}.
    Layout: ``images/head_NNN.nii.gz`` (int16 HU), ``bleed_masks/head_NNN.nii.gz``, ``datalist.json``.
    """
    _check_seed_num(seed, num)
    if not 0 <= bleed_fraction <= 1:
        raise ValueError(f"bleed_fraction must be within 0..1, got {bleed_fraction!r}")
    n_abnormal = round(num * bleed_fraction)
    abnormal = np.random.default_rng([seed, 1]).permutation([1] * n_abnormal + [0] * (num - n_abnormal))
    split = [""] * num
    for cls in (0, 1):
        members = np.flatnonzero(abnormal == cls)
        counts = _split_counts(len(members))
        for j, i in enumerate(members):
            split[i] = "training" if j < counts[0] else "validation" if j < counts[0] + counts[1] else "testing"

    def produce():
        lists, cases = {"training": [], "validation": [], "testing": []}, {}
        for i in range(num):
            name = f"head_{i:03d}"
            ph = make_head_phantom(_case_seed(seed, i), bleed=bool(abnormal[i]), scale=scale, spacing=spacing,
                                   shape=shape, orientation=orientation, bleed_size=bleed_size)
            entry = {"image": f"images/{name}.nii.gz", "label": int(abnormal[i]),
                     "bleed_mask": f"bleed_masks/{name}.nii.gz"}
            yield entry["image"], _nifti_bytes(ph.to_nifti("image"))
            yield entry["bleed_mask"], _nifti_bytes(ph.to_nifti("bleed"))
            lists[split[i]].append(entry)
            cases[name] = ph.info
        datalist = {
            "name": "ctfm head phantoms",
            "description": "CT-like heads for triage; label 1 = intracranial bleed (abnormal), 0 = normal",
            "tensorImageSize": "3D",
            "modality": {"0": "CT"},
            "labels": {"0": "normal", "1": "abnormal"},
            **lists,
            "generator": _generator("write_head_phantoms", seed=seed, num=num, bleed_fraction=bleed_fraction,
                                    scale=scale, spacing=spacing, shape=shape, orientation=orientation),
            "cases": cases,
        }
        yield DATALIST, _json_bytes(datalist)

    _write_files(Path(output_dir), produce, overwrite, f"write_head_phantoms(seed={seed}, num={num})")
    return Path(output_dir) / DATALIST


# --- Defective inputs -------------------------------------------------------------------------
def _mr_like(image: np.ndarray, rng) -> np.ndarray:
    """T1-like intensities from the CT's tissues: fat bright, water mid, air and bone dark, 0..4000."""
    mr = np.interp(image, [-1000, -850, -100, 40, 250, 1200], [15, 60, 3200, 1200, 1800, 300])
    return np.clip(mr + rng.normal(0, 20, image.shape), 0, 4000).astype(np.int16)


def write_defective_inputs(output_dir: str | os.PathLike, seed: int = 0, *, overwrite: bool = False) -> dict[str, Path]:
    """Write one file per defect in ``DEFECTS`` and a ``defects.json`` manifest; returns name -> path.

    All but ``empty`` and ``not_nifti`` start from a small body phantom, so the defect is the only
    thing wrong with them. ``label_other_grid`` goes with ``label_other_grid_image``.
    """
    _check_seed_num(seed)
    paths = {name: f"{name}.nii.gz" for name in DEFECTS}

    def produce():
        rng = np.random.default_rng([seed, 2])
        ph = make_body_phantom(_case_seed(seed, 0), shape=(24, 32, 40), fov="thorax")
        ct = ph.to_nifti("image")
        full = _nifti_bytes(ct)
        orient = ph.orientation
        yield paths["truncated"], full[: len(full) // 2]
        yield paths["empty"], b""
        yield paths["not_nifti"], b"This is a text file, not a NIfTI image.\n"
        middle = ph.image.shape[0] // 2
        two_d = nib.Nifti1Image(ph.image[middle], np.diag([-1.0, -1.0, 1.0, 1.0]))
        yield paths["two_d"], _nifti_bytes(two_d)
        phases = np.stack([ph.image, ph.image + 30, ph.image - 20], axis=-1).astype(np.int16)
        yield paths["four_d"], _nifti_bytes(to_nifti(phases, ph.affine, orient))
        yield paths["constant"], _nifti_bytes(to_nifti(np.zeros_like(ph.image), ph.affine, orient))
        yield paths["mr_like"], _nifti_bytes(to_nifti(_mr_like(ph.image, rng), ph.affine, orient))
        squeezed = np.clip((ph.image.astype(np.float32) + 160) / 400 * 255, 0, 255).round().astype(np.uint8)
        yield paths["uint8_0_255"], _nifti_bytes(to_nifti(squeezed, ph.affine, orient))
        yield paths["label_other_grid_image"], full
        coarse = ph.affine.copy()
        coarse[:3, :3] *= 2  # every second voxel: half the resolution ...
        coarse[:3, 3] += 7.0  # ... and a shifted origin
        yield paths["label_other_grid"], _nifti_bytes(to_nifti(ph.label[::2, ::2, ::2], coarse, orient))
        manifest = {
            "description": "Defective inputs for error tests; each file has exactly one defect.",
            "defects": {name: {"path": paths[name], "defect": text} for name, text in DEFECTS.items()},
            "generator": _generator("write_defective_inputs", seed=seed),
        }
        yield DEFECTS_MANIFEST, _json_bytes(manifest)

    root = Path(output_dir)
    _write_files(root, produce, overwrite, f"write_defective_inputs(seed={seed})")
    return {name: root / rel for name, rel in paths.items()}
