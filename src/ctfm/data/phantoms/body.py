"""Body phantoms: trunk, lungs, organs, ribs, aorta and spine at adult millimetres times a scale."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ctfm.data.phantoms.draw import _classes, _draw_common, _info, _overrides, _render
from ctfm.data.phantoms.geometry import (
    Phantom,
    _Canvas,
    _affine,
    _box,
    _cylinder,
    _ellipsoid,
    _jitter,
    _make_grid,
    _tubes,
)
from ctfm.data.phantoms.tables import (
    AIR_HU,
    BODY_NOISE_STD,
    BODY_SCALE,
    BODY_STRUCTURES,
    FIELDS_OF_VIEW,
    _SPINE,
    _ts_ids,
)


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
