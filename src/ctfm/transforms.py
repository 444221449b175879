"""The canonical CT-FM preprocessing: one definition, used by every bundle and tool.

In order (the authors' pretraining pipeline, ``experiments/fm/frameworks/intrasample_simclr.yaml``):

1. read and check the volume (:class:`ctfm.validation.LoadCTd`);
2. ``Orientation("SPL")``: array axis 0 toward Superior, 1 toward Posterior, 2 toward patient Left;
3. ``Spacing(3 x 1 x 1 mm)`` (S, P, L) for pretraining and embeddings; ``None`` keeps the native grid;
4. ``CropForeground`` on raw HU > 0, as the authors did for pretraining (before scaling, so it keeps
   the body, not the scanner's air);
5. ``ScaleIntensityRange(-1024..2048 HU -> 0..1, clip=True)``;
6. or, with ``crop_after_scaling``, ``CropForeground(margin=...)`` here instead, as the authors' segmentation
   (``evaluation/totalseg.yaml``: scale, then ``CropForeground(margin=10)``, which keeps every voxel above
   -1024 HU, i.e. the scanner's field of view rather than the body);
7. optionally ``SpatialPad`` to a minimum size with air (-1024 HU, 0 once scaled).

Labels (``label_key``) follow every spatial step with nearest-neighbour interpolation.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureTyped,
    Orientationd,
    ScaleIntensityRanged,
    SpatialPadd,
)
from monai.transforms import Spacingd as MonaiSpacingd

from ctfm.io import root_cause
from ctfm.registry import EMBEDDING_SPACING, HU_MAX, HU_MIN, ORIENTATION
from ctfm.validation import LoadCTd

# Axis labels of the world frame: MONAI readers return RAS+ affines (ITK's LPS is converted).
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


class Spacingd(MonaiSpacingd):
    """MONAI's ``Spacingd``, except that it leaves alone ``<key>_*`` entries that are not dicts.

    MONAI 1.5+ updates every ``<key>_*`` entry of a NIfTI input with the new metadata, as if each
    were a ``<key>_meta_dict``; MONAI Label puts the string ``image_path`` in the data, which then
    fails with "'str' object has no attribute 'update'".
    """

    def __call__(self, data, lazy=None):
        d = dict(data)
        aside = {
            k: d.pop(k)
            for k in list(d)
            if isinstance(k, str) and not isinstance(d[k], dict) and any(k.startswith(f"{key}_") for key in self.keys)
        }
        return {**super().__call__(d, lazy=lazy), **aside}


def hu_scaling(keys: str | Sequence[str] = "image") -> ScaleIntensityRanged:
    """``ScaleIntensityRange(-1024..2048 HU -> 0..1, clip=True)``: CT-FM's only intensity normalisation."""
    return ScaleIntensityRanged(keys=keys, a_min=HU_MIN, a_max=HU_MAX, b_min=0.0, b_max=1.0, clip=True)


def ct_fm_transforms(
    image_key: str = "image",
    label_key: str | None = None,
    spacing: Sequence[float] | None = EMBEDDING_SPACING,
    crop_foreground: bool = True,
    min_size: Sequence[int] | None = None,
    load: bool = True,
    require_hu: bool = True,
    nonfinite: str = "error",
    num_classes: int | None = None,
    crop_after_scaling: bool = False,
    crop_margin: int = 0,
) -> Compose:
    """The CT-FM preprocessing of a ``{"image": path[, "label": path]}`` dict (see module docstring).

    Args:
        spacing: target voxel size in mm along S, P, L; ``None`` keeps the native spacing.
        crop_foreground: crop to the bounding box of the foreground: voxels above 0 HU, or with
            ``crop_after_scaling`` voxels above -1024 HU (the authors' segmentation recipe).
        crop_after_scaling: crop after the intensity scaling (see the module docstring, step 6).
        crop_margin: voxels kept around the foreground box on each side (the authors' segmentation: 10).
        min_size: pad (with air) to at least this many voxels per axis, e.g. the patch size.
        load: start with reading the files; ``False`` when the dict already holds MetaTensors.
        require_hu: reject volumes whose intensities are not Hounsfield units.
        nonfinite: ``"error"`` refuses an image with NaN or infinite voxels (naming the file and the
            count); ``"air"`` reads them as -1024 HU with a logged warning. Never silent.
        num_classes: refuse label values outside ``0..num_classes-1`` (naming the file and the values).

    The checks are :class:`ctfm.validation.LoadCTd`'s; ``docs/input_checks.md`` lists them.
    """
    keys = [image_key] + ([label_key] if label_key else [])
    modes = ["bilinear"] + (["nearest"] if label_key else [])
    steps = []
    if load:
        steps.append(
            LoadCTd(
                keys, image_key=image_key, label_keys=keys[1:], require_hu=require_hu,
                nonfinite=nonfinite, num_classes=num_classes,
            )
        )
    steps.append(Orientationd(keys=keys, axcodes=ORIENTATION, labels=RAS_LABELS))
    if spacing is not None:
        steps.append(Spacingd(keys=keys, pixdim=tuple(spacing), mode=modes))
    crop = CropForegroundd(keys=keys, source_key=image_key, margin=crop_margin, allow_smaller=True)
    if crop_foreground and not crop_after_scaling:
        # MONAI's default select_fn keeps x > 0, i.e. HU > 0 before scaling (the authors' pretraining).
        steps.append(crop)
    steps.append(hu_scaling(image_key))
    if crop_foreground and crop_after_scaling:
        steps.append(crop)  # x > 0 once scaled: above -1024 HU (the authors' segmentation)
    if min_size is not None:
        # after scaling, 0 is air (-1024 HU); labels pad with background
        steps.append(SpatialPadd(keys=keys, spatial_size=tuple(min_size), value=0))
    steps.append(EnsureTyped(keys=keys, dtype=None))
    return Compose(steps)


def preprocess(path, spacing: Sequence[float] | None = EMBEDDING_SPACING, **kwargs):
    """Read one volume (file or DICOM folder) and apply :func:`ct_fm_transforms`; returns a (1, S, P, L) MetaTensor.

    Input errors surface as themselves (:class:`~ctfm.validation.CTInputError`, ``FileNotFoundError``),
    not wrapped in MONAI's "applying transform" RuntimeError.
    """
    try:
        return ct_fm_transforms(spacing=spacing, **kwargs)({"image": str(path)})["image"]
    except RuntimeError as err:
        cause = root_cause(err)
        if cause is err:
            raise
        raise cause from None
