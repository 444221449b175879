"""Checks that turn bad input into one clear error: the file, the problem, the fix.

Used by the canonical preprocessing (:mod:`ctfm.transforms`) right after a volume is read, and by
every tool before it starts long work (:func:`check_files_exist`).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform

MIN_SIZE = 4  # voxels per axis below which a "volume" is a slice, a localizer or a thumbnail
AFFINE_TOL = 1e-3  # mm: label and image grids must agree to this


class CTInputError(ValueError):
    """An input volume that CT-FM cannot use. The message names the file, the problem and the fix."""


def source_name(img, fallback: str = "<array>") -> str:
    """The file a MetaTensor was read from, for error messages."""
    meta = getattr(img, "meta", None) or {}
    name = meta.get("filename_or_obj", fallback)
    return str(name[0] if isinstance(name, (list, tuple)) and name else name)


def load_volume(path: str | os.PathLike, reader=None) -> MetaTensor:
    """Read a NIfTI/NRRD file or a DICOM series folder as a channel-first MetaTensor, with clear errors."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or DICOM folder. Check the path (and dataset_dir in datalists).")
    if path.is_file() and path.stat().st_size == 0:
        raise CTInputError(f"{path}: the file is empty (0 bytes). Copy or export it again.")
    if reader is None and path.is_dir():
        reader = "ITKReader"  # DICOM series folders: only ITK reads them (also JPEG 2000 compressed)
    try:
        return LoadImage(reader=reader, ensure_channel_first=True, image_only=True)(str(path))
    except Exception as err:  # noqa: BLE001 - every reader raises its own types
        raise CTInputError(
            f"{path}: cannot be read as an image ({type(err).__name__}: {err}). The file is truncated, corrupt or in "
            "an unsupported format. Supported: NIfTI (.nii, .nii.gz), NRRD (.nrrd), a folder holding one DICOM series."
        ) from err


def check_ct_volume(img: torch.Tensor, source: str | None = None, require_hu: bool = True) -> None:
    """Raise :class:`CTInputError` unless ``img`` (channel-first, one channel) is a usable 3-D CT in HU."""
    source = source or source_name(img)
    shape = tuple(img.shape)
    if img.ndim != 4:
        raise CTInputError(
            f"{source}: expected a 3-D volume, got {img.ndim - 1} spatial dimension(s) (shape {shape[1:]}). "
            "CT-FM needs one 3-D scan: for a 4-D file pick one volume (e.g. one phase); a 2-D image is not a CT volume."
        )
    if shape[0] != 1:
        raise CTInputError(
            f"{source}: {shape[0]} channels (shape {shape}); CT-FM takes one. A 4-D file with several volumes or an RGB "
            "export is not a CT volume: write one 3-D volume per file."
        )
    if min(shape[1:]) < MIN_SIZE:
        raise CTInputError(
            f"{source}: spatial shape {shape[1:]} has an axis under {MIN_SIZE} voxels; this is a slice or a localizer, "
            "not a CT volume."
        )
    lo, hi = float(img.min()), float(img.max())
    if hi - lo < 1:
        raise CTInputError(f"{source}: the volume is constant ({lo:g} everywhere); the file holds no image.")
    if not require_hu:
        return
    if lo >= 0:
        raise CTInputError(
            f"{source}: intensities run from {lo:g} to {hi:g} with nothing below 0, so they are not Hounsfield units "
            "(a CT always holds air or fat below 0 HU). This looks like MR, an 8-bit export (0..255), or raw CT values "
            "without RescaleSlope/RescaleIntercept. Convert to HU first (e.g. raw - 1024 for unsigned stored CT)."
        )
    if lo < -10_000 or hi > 50_000:
        raise CTInputError(
            f"{source}: intensities from {lo:g} to {hi:g} are far outside the Hounsfield range (-1024..3071 typical); "
            "the rescale slope/intercept is probably applied twice or the file is not CT."
        )


def check_same_grid(image: torch.Tensor, label: torch.Tensor, image_src: str = "", label_src: str = "") -> None:
    """Raise unless ``label`` lies on the voxel grid of ``image`` (same shape and affine)."""
    image_src, label_src = image_src or source_name(image), label_src or source_name(label)
    if tuple(image.shape[1:]) != tuple(label.shape[1:]):
        raise CTInputError(
            f"label map {label_src} (shape {tuple(label.shape[1:])}) is not on the grid of image {image_src} "
            f"(shape {tuple(image.shape[1:])}). Resample the label map to the image grid with nearest-neighbour "
            "interpolation, or pair it with the image it was drawn on."
        )
    a_img, a_lab = getattr(image, "affine", None), getattr(label, "affine", None)
    if a_img is not None and a_lab is not None and not np.allclose(np.asarray(a_img), np.asarray(a_lab), atol=AFFINE_TOL):
        raise CTInputError(
            f"label map {label_src} has the image's shape but another position/orientation/spacing than {image_src} "
            f"(affines differ:\n{np.round(np.asarray(a_lab), 3)}\nvs\n{np.round(np.asarray(a_img), 3)}). Resample it to "
            "the image grid (nearest neighbour)."
        )


def check_files_exist(items: Iterable[Mapping], keys: Iterable[str] = ("image", "label"), where: str = "") -> None:
    """Check up front that every path of a datalist exists; one error lists all that are missing."""
    missing = [
        str(item[k])
        for item in items
        for k in keys
        if isinstance(item.get(k), (str, os.PathLike)) and not Path(item[k]).exists()
    ]
    if missing:
        shown = "\n  ".join(missing[:10]) + (f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise FileNotFoundError(
            f"{len(missing)} file(s) of {where or 'the datalist'} do not exist:\n  {shown}\n"
            "Check dataset_dir (paths in a datalist are relative to it) and the datalist itself."
        )


class LoadCTd(MapTransform):
    """Read each key with :func:`load_volume` and check it: images as CT in HU, labels on the image grid.

    The one place the project reads volumes in MONAI pipelines, so every bundle and tool fails the
    same clear way on a missing, corrupt, 2-D, 4-D, constant or non-HU file.
    """

    def __init__(
        self,
        keys,
        image_key: str = "image",
        label_keys: Iterable[str] = ("label",),
        require_hu: bool = True,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.image_key, self.label_keys, self.require_hu = image_key, tuple(label_keys), require_hu

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = load_volume(d[key])
        if self.image_key in d and isinstance(d[self.image_key], torch.Tensor):
            check_ct_volume(d[self.image_key], require_hu=self.require_hu)
            for key in self.label_keys:
                if isinstance(d.get(key), torch.Tensor):
                    check_same_grid(d[self.image_key], d[key])
        return d
