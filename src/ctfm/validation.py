"""Checks that turn bad input into one clear error: the file, the problem, the fix.

Used by the canonical preprocessing (:mod:`ctfm.transforms`) right after a volume is read, and by
every tool before it starts long work (:func:`check_files_exist`). The rules are listed once, for
users, in ``docs/input_checks.md``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Hashable, Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor, load_decathlon_datalist
from monai.transforms import LoadImage, MapTransform

from ctfm.io import is_dicom_folder
from ctfm.registry import AIR_HU  # what nonfinite="air" writes (the CT-FM padding value)

MIN_SIZE = 4  # voxels per axis below which a "volume" is a slice, a localizer or a thumbnail
AFFINE_TOL = 1e-3  # mm: label and image grids must agree to this
NONFINITE_POLICIES = ("error", "air")
# Slices thicker than this were never in CT-FM's pretraining data (the paper keeps 1..5 mm): the loader
# warns above it; prepare-pretraining's quality filter refuses such scans.
MAX_SLICE_SPACING_MM = 5.0
# The non-HU test (:func:`non_hu_reason`).
AIR_BELOW_HU = -500.0  # air (-1000) and lung (-850) lie below; no tissue does
MIN_AIR_FRACTION = 0.001  # a CT shows air around the body, in lungs or bowel, or as scanner padding
NO_AIR_MAX_P99_HU = 1000.0  # without air, 1 % of voxels above this is MR-like (only dense bone and metal exceed it)
NO_AIR_MIN_SPREAD_HU = 20.0  # even a brain-windowed CT (0..80 HU) spans more; a normalised (0..1, z-scored) MR less
STATS_SAMPLE = 1 << 20  # voxels read for the percentile statistics (an even stride through the volume)

logger = logging.getLogger(__name__)
_warned_thick: set[str] = set()  # files already warned about in this process (epochs re-read every scan)


class CTInputError(ValueError):
    """An input volume that CT-FM cannot use. The message names the file, the problem and the fix."""


class DatalistError(ValueError):
    """A datalist that cannot be read (syntax, missing list, malformed entry). The message names the datalist,
    the entry and the fix; missing files are a ``FileNotFoundError`` with the same details."""


def source_name(img, fallback: str = "<array>") -> str:
    """The file a MetaTensor was read from, for error messages."""
    meta = getattr(img, "meta", None) or {}
    name = meta.get("filename_or_obj", fallback)
    return str(name[0] if isinstance(name, (list, tuple)) and name else name)


def load_volume(
    path: str | os.PathLike,
    reader=None,
    *,
    ct: bool = False,
    require_hu: bool = True,
    nonfinite: str = "error",
) -> MetaTensor:
    """Read a NIfTI/NRRD file or a DICOM series folder as a channel-first MetaTensor, with clear errors.

    Every volume (image or label map) must be one 3-D channel of finite numbers (:func:`check_volume`).
    ``ct=True`` adds the CT image checks of :func:`check_ct_volume` (size, constant, Hounsfield units
    unless ``require_hu=False``, a warning for thick slices).

    Args:
        nonfinite: ``"error"`` (default) refuses a volume holding NaN or infinite voxels, naming the
            file and how many; ``"air"`` reads them as air (-1024 HU) and logs a warning with the count.
    """
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, not {nonfinite!r}.")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or DICOM folder. Check the path (and dataset_dir in datalists).")
    if path.is_file() and path.stat().st_size == 0:
        raise CTInputError(f"{path}: the file is empty (0 bytes). Copy or export it again.")
    if path.is_dir() and not is_dicom_folder(path):
        found = sorted(p.name for p in path.iterdir())
        shown = f"it holds {', '.join(found[:5])}{' ...' if len(found) > 5 else ''}" if found else "it is empty"
        raise CTInputError(
            f"{path}: a folder without a DICOM file ({shown}). Give a NIfTI/NRRD file, or a folder holding one "
            "DICOM series."
        )
    if reader is None and path.is_dir():
        reader = "ITKReader"  # DICOM series folders: only ITK reads them (also JPEG 2000 compressed)
    try:
        img = LoadImage(reader=reader, ensure_channel_first=True, image_only=True)(str(path))
    except Exception as err:  # noqa: BLE001 - every reader raises its own types
        raise CTInputError(
            f"{path}: cannot be read as an image ({type(err).__name__}: {err}). The file is truncated, corrupt or in "
            "an unsupported format. Supported: NIfTI (.nii, .nii.gz), NRRD (.nrrd), a folder holding one DICOM series."
        ) from err
    if nonfinite == "air":
        img = nonfinite_as_air(img, str(path))
    if ct:
        check_ct_volume(img, str(path), require_hu=require_hu)
    else:
        check_volume(img, str(path))
    return img


def count_nonfinite(img: torch.Tensor) -> tuple[int, int]:
    """(NaN voxels, infinite voxels); integer volumes hold neither."""
    if not img.is_floating_point():
        return 0, 0
    nan = int(torch.isnan(img).sum())
    return nan, int((~torch.isfinite(img)).sum()) - nan


def nonfinite_as_air(img: torch.Tensor, source: str | None = None) -> torch.Tensor:
    """``img`` with NaN and infinite voxels set to air (-1024 HU), logged with their count (never silently)."""
    nan, inf = count_nonfinite(img)
    if not nan + inf:
        return img
    logger.warning(
        "%s: %d NaN and %d infinite voxel(s) read as air (%g HU), as nonfinite='air' asks.",
        source or source_name(img), nan, inf, AIR_HU,
    )
    return torch.nan_to_num(img, nan=AIR_HU, posinf=AIR_HU, neginf=AIR_HU)


def check_volume(img: torch.Tensor, source: str | None = None) -> None:
    """Raise :class:`CTInputError` unless ``img`` (channel-first) is one 3-D channel of finite numbers.

    What every volume must be, image or label map. Non-finite voxels (NaN, inf) are never used: they
    would turn every embedding, loss and prediction into NaN without an error.
    """
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
    nan, inf = count_nonfinite(img)
    if nan + inf:
        raise CTInputError(
            f"{source}: {nan + inf:,} of {img.numel():,} voxels are not finite numbers "
            f"({nan:,} NaN, {inf:,} infinite). "
            "A scan holds a number in every voxel: the file was damaged or written by a failed conversion; export it "
            "again. To read those voxels as air (-1024 HU) instead, pass nonfinite='air' to the preprocessing "
            "(ctfm.transforms.ct_fm_transforms, ctfm.validation.LoadCTd or load_volume)."
        )


def check_ct_volume(img: torch.Tensor, source: str | None = None, require_hu: bool = True) -> None:
    """Raise :class:`CTInputError` unless ``img`` (channel-first, one channel) is a usable 3-D CT in HU.

    On top of :func:`check_volume`: at least ``MIN_SIZE`` voxels per axis, not constant, and (with
    ``require_hu``) Hounsfield units by :func:`non_hu_reason`. Slices thicker than
    ``MAX_SLICE_SPACING_MM`` are accepted with a warning (:func:`warn_thick_slices`).
    """
    source = source or source_name(img)
    check_volume(img, source)
    shape = tuple(img.shape)
    if min(shape[1:]) < MIN_SIZE:
        raise CTInputError(
            f"{source}: spatial shape {shape[1:]} has an axis under {MIN_SIZE} voxels; this is a slice or a localizer, "
            "not a CT volume."
        )
    lo, hi = float(img.min()), float(img.max())
    if hi - lo < 1:
        raise CTInputError(f"{source}: the volume is constant ({lo:g} everywhere); the file holds no image.")
    warn_thick_slices(img, source)
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
    reason = non_hu_reason(img)
    if reason:
        raise CTInputError(
            f"{source}: {reason}, so the intensities are not Hounsfield units. This looks like MR (or another "
            "modality) stored as float. CT-FM needs CT in HU; if this is a CT, convert it to HU first."
        )


def non_hu_reason(img: torch.Tensor) -> str | None:
    """Why a volume with some negative values is still not CT in Hounsfield units, or ``None``.

    The rule, on robust statistics of the voxels (an even sample of ~1M of them):

    - A CT shows air: at least 0.1 % of its voxels at or below -500 HU (the air around the body, the
      lungs or bowel gas, or the scanner's -1024/-3024 padding). Such a volume passes.
    - A volume without air passes only if it looks like a CT whose air was masked to 0 (an atlas, a
      skull-stripped head): its 99th percentile at most 1000 HU (in CT only dense bone and metal are
      brighter, never 1 % of a scan without air) and a spread (max - min) of at least 20 HU.

    MR stored as float (mostly positive, a few negative values from resampling or bias correction,
    no air near -1000) fails one of the two: raw scanner intensities by the 99th percentile,
    normalised (0..1) or z-scored intensities by the spread. Every real sample CT the project fetches
    (abdomen, DICOM series, chest NRRD, brain template) and every phantom passes.
    """
    values = np.asarray(img.detach().cpu()).reshape(-1)
    values = values[:: max(1, values.size // STATS_SAMPLE)].astype(np.float32)
    air = float(np.mean(values <= AIR_BELOW_HU))
    if air >= MIN_AIR_FRACTION:
        return None
    p99, spread = float(np.percentile(values, 99)), float(values.max() - values.min())
    no_air = f"only {air:.2%} of the voxels are at or below {AIR_BELOW_HU:g} HU (a CT shows air)"
    if p99 > NO_AIR_MAX_P99_HU:
        return (
            f"{no_air}, yet 1 % of them are above {p99:.4g} (99th percentile; in CT only dense bone or metal "
            f"exceeds {NO_AIR_MAX_P99_HU:g} HU)"
        )
    if spread < NO_AIR_MIN_SPREAD_HU:
        return f"{no_air}, and all values lie within {spread:.4g} of each other (a CT spans over {NO_AIR_MIN_SPREAD_HU:g})"
    return None


def warn_thick_slices(img: torch.Tensor, source: str | None = None) -> None:
    """Log a warning when a voxel axis is coarser than ``MAX_SLICE_SPACING_MM`` (CT-FM never saw such slices).

    The one rule for extreme slice spacing: every entry point accepts the scan with this warning (once
    per file and process); only prepare-pretraining refuses it, as the paper's quality filter (1..5 mm).
    """
    pixdim = getattr(img, "pixdim", None)
    source = source or source_name(img)
    if pixdim is None or source in _warned_thick:
        return
    spacing = [round(float(v), 3) for v in pixdim[:3]]
    if max(spacing) > MAX_SLICE_SPACING_MM:
        _warned_thick.add(source)
        logger.warning(
            "%s: voxel spacing %s mm; slices thicker than %g mm were not in CT-FM's pretraining data (1..5 mm), "
            "so embeddings and predictions may be poor. Use a thinner reconstruction if there is one.",
            source, " x ".join(f"{v:g}" for v in spacing), MAX_SLICE_SPACING_MM,
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


def read_datalist(datalist: str | os.PathLike) -> dict:
    """The JSON of a datalist file; a missing file or a syntax error (with its line and column) is one clear error."""
    path = Path(datalist)
    if not path.is_file():
        raise FileNotFoundError(f"datalist {path} does not exist. Give --datalist (or --dataset_dir holding "
                                "datalist.json) a decathlon-style JSON file; the ctfm convert-* commands write one.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DatalistError(
            f"datalist {path}: not valid JSON at line {err.lineno}, column {err.colno} ({err.msg}). Fix the syntax "
            "there (often a missing or trailing comma, or an unclosed bracket or quote), or write the datalist again."
        ) from None


def load_datalist(
    datalist: str | os.PathLike,
    split: str,
    dataset_dir: str | os.PathLike | None = None,
    keys: Iterable[str] = ("image", "label"),
    is_segmentation: bool = True,
) -> list[dict]:
    """The ``split`` list of a decathlon-style datalist, as MONAI's ``load_decathlon_datalist`` reads it
    (relative paths joined to ``dataset_dir``, else to the datalist's folder), checked before any work.

    A JSON syntax error names the line and column; a missing or empty ``split`` names the lists there
    are; every path under ``keys`` must exist, and one error names the missing entries (split and
    index, as written and as resolved) and the folder relative paths were resolved against.
    """
    path = Path(datalist)
    raw = read_datalist(path)
    entries = raw.get(split) if isinstance(raw, dict) else None
    if not isinstance(entries, list) or not entries:
        lists = sorted(k for k, v in raw.items() if isinstance(v, list) and v) if isinstance(raw, dict) else []
        raise DatalistError(f"datalist {path} has no entries under {split!r}; its non-empty lists are {lists}. "
                            "Add the entries, or choose one of those lists.")
    for index, entry in enumerate(entries):
        if not (isinstance(entry, str) or (isinstance(entry, dict) and "image" in entry)):
            raise DatalistError(f"datalist {path}: entry {split}[{index}] is {entry!r}, not an object with an "
                                '"image" path. Write each entry as {"image": path, ...}.')
    base = Path(dataset_dir) if dataset_dir not in (None, "") else path.parent
    items = load_decathlon_datalist(path, is_segmentation=is_segmentation, data_list_key=split, base_dir=base)
    written = [{"image": e} if isinstance(e, str) else e for e in entries]
    missing = [
        f"{split}[{index}] {key} {given[key]!r} -> {item[key]}"
        for index, (given, item) in enumerate(zip(written, items))
        for key in keys
        if isinstance(item.get(key), (str, os.PathLike)) and not Path(item[key]).exists()
    ]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        against = f"dataset_dir {base}" if dataset_dir not in (None, "") else f"the datalist's folder {base}"
        raise FileNotFoundError(
            f"datalist {path}: {len(missing)} file(s) do not exist: {'; '.join(missing[:3])}{more}. Relative paths "
            f"are resolved against {against}: set --dataset_dir to the folder they are relative to, or fix those "
            "entries."
        )
    return items


def check_label_values(label: torch.Tensor, num_classes: int | None = None, source: str | None = None) -> None:
    """Raise :class:`CTInputError` unless every voxel of a label map is a class id: an integer in ``0..num_classes-1``.

    Without ``num_classes`` only whole, non-negative values are required. The error names the file
    and the values outside the class map (a later ``index 200 is out of bounds`` would name neither).
    """
    source = source or source_name(label)
    values = label.detach()
    bad = (values < 0) | (values != torch.round(values)) if values.is_floating_point() else values < 0
    if num_classes is not None:
        bad |= values >= num_classes
    if not bool(bad.any()):
        return
    found = torch.unique(values[bad])
    shown = ", ".join(f"{float(v):g}" for v in found[:10]) + (f", ... {len(found) - 10} more" if len(found) > 10 else "")
    allowed = f"class ids 0..{num_classes - 1}" if num_classes is not None else "whole non-negative class ids"
    raise CTInputError(
        f"label map {source}: {int(bad.sum()):,} voxel(s) hold values outside the class map ({allowed}): {shown}. "
        "Map them to the task's class ids (or 0 for background), or set num_classes to the label map's classes; "
        "a label map must be resampled with nearest-neighbour interpolation, never linear."
    )


class LoadCTd(MapTransform):
    """Read each key with :func:`load_volume` and check it: images as CT in HU, labels as class ids on the image grid.

    The one place the project reads volumes in MONAI pipelines, so every bundle and tool fails the
    same clear way on a missing, corrupt, 2-D, 4-D, non-finite, constant or non-HU file, and on a
    label map with values outside the class map (``num_classes``) or on another grid.

    Args:
        require_hu: reject images whose intensities are not Hounsfield units.
        nonfinite: ``"error"`` (default) refuses an image with NaN or infinite voxels; ``"air"`` reads
            them as -1024 HU with a logged warning. Label maps with such voxels are always refused.
        num_classes: refuse label values outside ``0..num_classes-1``; ``None`` checks only that they
            are whole and non-negative.
    """

    def __init__(
        self,
        keys,
        image_key: str = "image",
        label_keys: Iterable[str] = ("label",),
        require_hu: bool = True,
        allow_missing_keys: bool = False,
        nonfinite: str = "error",
        num_classes: int | None = None,
    ):
        super().__init__(keys, allow_missing_keys)
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, not {nonfinite!r}.")
        self.image_key, self.label_keys, self.require_hu = image_key, tuple(label_keys), require_hu
        self.nonfinite, self.num_classes = nonfinite, num_classes

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            if key == self.image_key:
                d[key] = load_volume(d[key], ct=True, require_hu=self.require_hu, nonfinite=self.nonfinite)
            else:
                d[key] = load_volume(d[key])
        image = d.get(self.image_key)
        for key in self.label_keys:
            if isinstance(d.get(key), torch.Tensor):
                if isinstance(image, torch.Tensor):
                    check_same_grid(image, d[key])
                check_label_values(d[key], self.num_classes)
        return d
