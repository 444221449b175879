"""The head-CT triage preprocessing of the CT-FM authors, as one chain of MONAI transforms.

In order (``evaluation/sinoct.yaml`` of project-lighter/CT-FM):

1. read and check the volume (:class:`ctfm.validation.LoadCTd`: NIfTI, NRRD or a DICOM series folder);
2. ``Orientation("SPL")``, the CT-FM frame;
3. ``CropForeground`` on raw HU > 0 (the head, not the air around it);
4. ``Spacing(5 x 2 x 2 mm)`` along S, P, L;
5. ``SpatialPad`` with the volume's minimum, then ``CenterSpatialCrop`` to 48 x 128 x 128 (240 x 256 x 256 mm);
6. four copies, each ``ScaleIntensityRange(window -> 0..1, clip=True)``: blood, subdural, stroke, bone;
7. ``ConcatItems``: along the first spatial axis (``"concat"``, 192 x 128 x 128, one channel, what
   the authors did so that the single-channel CT-FM encoder takes it) or as four channels (``"channels"``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from monai.transforms import (
    CenterSpatialCropd,
    Compose,
    ConcatItemsd,
    CopyItemsd,
    CropForegroundd,
    DeleteItemsd,
    EnsureChannelFirstd,
    EnsureTyped,
    Orientationd,
    ScaleIntensityRanged,
    SpatialPadd,
)
from monai.utils import look_up_option

from ctfm.registry import ORIENTATION
from ctfm.transforms import RAS_LABELS, Spacingd  # keeps MONAI Label's image_path
from ctfm.validation import LoadCTd

# Window name -> (low, high) HU, each scaled to 0..1 (paper, Methods; the SinoCT authors' best setting).
WINDOWS: dict[str, tuple[float, float]] = {
    "blood": (0.0, 80.0),
    "subdural": (-125.0, 175.0),
    "stroke": (28.0, 36.0),
    "bone": (-900.0, 2100.0),
}
# window_layout -> the axis of the channel-first tensor the windows are joined along.
LAYOUT_AXIS = {"concat": 1, "channels": 0}


def num_input_channels(window_layout: str) -> int:
    """Channels the network sees: 1 when the windows are concatenated, one per window otherwise."""
    return 1 if look_up_option(window_layout, LAYOUT_AXIS) == 1 else len(WINDOWS)


def triage_transforms(
    spacing: Sequence[float],
    spatial_size: Sequence[int],
    window_layout: str = "concat",
    image_key: str = "image",
    label_key: str | None = None,
    windows: Mapping[str, Sequence[float]] = WINDOWS,
    load: bool = True,
) -> Compose:
    """The preprocessing above for ``{"image": path[, "label": 0 or 1]}``; ``spatial_size`` is per window.

    The label, when given, becomes a float tensor of shape (1,), the shape of the network's logit.
    """
    axis = look_up_option(window_layout, LAYOUT_AXIS)
    names = [f"{image_key}_{name}" for name in windows]
    steps = [LoadCTd(image_key, image_key=image_key, label_keys=())] if load else []
    steps += [
        Orientationd(image_key, axcodes=ORIENTATION, labels=RAS_LABELS),
        # MONAI's default select_fn keeps x > 0: HU > 0 before windowing, as the authors did.
        CropForegroundd(image_key, source_key=image_key, allow_smaller=True),
        Spacingd(image_key, pixdim=tuple(spacing), mode="bilinear"),
        SpatialPadd(image_key, spatial_size=tuple(spatial_size), mode="minimum"),
        CenterSpatialCropd(image_key, roi_size=tuple(spatial_size)),
        CopyItemsd(image_key, times=len(names), names=names),
    ]
    steps += [
        ScaleIntensityRanged(name, a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)
        for name, (low, high) in zip(names, windows.values())
    ]
    steps += [ConcatItemsd(names, name=image_key, dim=axis), DeleteItemsd(names)]
    if label_key:
        steps += [
            EnsureTyped(label_key, dtype=torch.float32, track_meta=False),
            EnsureChannelFirstd(label_key, channel_dim="no_channel"),
        ]
    return Compose(steps)
