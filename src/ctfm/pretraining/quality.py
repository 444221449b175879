"""The paper's quality filters for pretraining scans (supplement S1), read from headers only.

Slice thickness 1..5 mm, more than 50 slices, one image per position, no localizer. DICOM series are checked
with pydicom (no pixels); NIfTI/NRRD files carry no DICOM header: for them the slice count and the spacing
along the through-plane axis (as slice thickness) are checked, the other two cannot be, and
:func:`unchecked_filters` says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class QualityFilters:
    """The paper's selection (supplement S1); the defaults are the paper's values."""

    min_slice_thickness: float = 1.0  # mm
    max_slice_thickness: float = 5.0  # mm
    min_slices_exclusive: int = 50  # "num_instances > 50"


def inspect_scan(path: Path) -> dict:
    """What the filters need, from headers only: slices, thickness(es), positions, localizer, modality."""
    if path.is_dir():
        return _inspect_dicom_folder(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        img = nib.load(str(path))
        axes, shape = np.asarray(img.affine)[:3, :3], img.shape
        directions = axes.T  # columns of the affine are the voxel axes
    elif name.endswith((".nrrd", ".nhdr")):
        import nrrd

        header = nrrd.read_header(str(path))
        shape = tuple(header["sizes"])
        directions = np.asarray(header.get("space directions"), dtype=float)
    else:
        return {"kind": "other"}
    if len(shape) != 3:
        return {"kind": "volume", "ndim": len(shape)}
    through = int(np.argmax(np.abs(directions[:, 2])))  # the axis closest to head-foot
    return {
        "kind": "volume",
        "ndim": 3,
        "slices": int(shape[through]),
        "thickness": [float(np.linalg.norm(directions[through]))],
    }


def _inspect_dicom_folder(folder: Path) -> dict:
    import pydicom

    tags = ["SeriesInstanceUID", "Modality", "SliceThickness", "ImagePositionPatient", "ImageType"]
    headers = []
    for f in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            headers.append(pydicom.dcmread(f, stop_before_pixels=True, specific_tags=tags))
        except Exception:  # noqa: BLE001 - not DICOM (a README, a thumbnail): ignored, as DICOM readers do
            continue
    thickness = [float(h.SliceThickness) for h in headers if getattr(h, "SliceThickness", None) not in (None, "")]
    positions = {tuple(round(float(v), 3) for v in h.ImagePositionPatient) for h in headers if "ImagePositionPatient" in h}
    return {
        "kind": "dicom",
        "instances": len(headers),
        "series": len({str(getattr(h, "SeriesInstanceUID", "")) for h in headers}),
        "modalities": sorted({str(getattr(h, "Modality", "")) for h in headers}),
        "localizer": any("LOCALIZER" in [str(t).upper() for t in getattr(h, "ImageType", [])] for h in headers),
        "positions": len(positions),
        "slices": len(headers),
        "thickness": thickness,
    }


def quality_problems(info: dict, filters: QualityFilters = QualityFilters()) -> list[str]:
    """Why a scan fails the paper's selection (empty if it passes)."""
    problems = []
    if info["kind"] == "dicom":
        if info["instances"] == 0:
            return ["no DICOM files in the folder"]
        if info["series"] > 1:
            problems.append(f"{info['series']} series in one folder (give one folder per series)")
        if info["modalities"] != ["CT"]:
            problems.append(f"modality {'/'.join(info['modalities'])}, not CT")
        if info["localizer"]:
            problems.append("holds LOCALIZER images")
        if info["positions"] != info["instances"]:
            problems.append(f"{info['instances']} images at {info['positions']} positions (not one image per position)")
    elif info["kind"] == "volume" and info["ndim"] != 3:
        return [f"{info['ndim']}-D image, not a 3-D volume"]
    if "slices" in info and info["slices"] <= filters.min_slices_exclusive:
        problems.append(f"{info['slices']} slices (the paper keeps more than {filters.min_slices_exclusive})")
    thick = info.get("thickness") or []
    lo, hi = filters.min_slice_thickness, filters.max_slice_thickness
    if thick and (min(thick) < lo or max(thick) > hi):
        problems.append(f"slice thickness {min(thick):g}..{max(thick):g} mm outside {lo:g}..{hi:g} mm")
    return problems


def unchecked_filters(info: dict) -> str:
    """The filters that could not be applied to this kind of input (recorded in the manifest)."""
    if info["kind"] == "volume":
        return "not checkable without DICOM headers: one image per position, localizer; thickness = spacing"
    if info["kind"] == "other":
        return "no header checks for this format"
    return ""
