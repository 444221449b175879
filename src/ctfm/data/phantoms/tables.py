"""What a phantom is drawn from: sizes, spacings, orientations, fields of view, HU ranges, noise, structures."""

from __future__ import annotations

from ctfm.registry import totalsegmentator_ids


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


def _ts_ids(names) -> dict[str, int]:
    """Ids of TotalSegmentator names, with a clear error for a name the class map does not hold."""
    ids = totalsegmentator_ids()
    unknown = [n for n in names if n not in ids]
    if unknown:
        raise ValueError(f"not TotalSegmentator v2 'total' class names: {unknown}; see ctfm.registry")
    return {n: ids[n] for n in names}
