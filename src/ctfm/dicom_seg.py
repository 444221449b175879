"""A label map of a DICOM series as a DICOM SEG object that references that series, for PACS and viewers.

Written with highdicom (the ``dicom`` extra): it is the reference implementation of DICOM SEG in Python,
maintained by the Imaging Data Commons team and validated against the standard, so the object's many
required modules (references to every source instance, per-frame plane positions, segment descriptions)
are right without writing them by hand here. RTSTRUCT is not written: contours would have to be traced
from the voxel masks, and no equally well-kept library does it (highdicom writes SEG, not RTSTRUCT).

Each segment is one structure present in the map, numbered 1..N in class-map id order; its label is the
structure's class-map name, its property category and type are the generic SNOMED "Anatomical structure"
(the class map carries no SNOMED codes per structure).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

import ctfm
from ctfm.io import atomic_path

EXTRA = "dicom"  # pip install "ctfm[dicom]"
# A DICOM SEG names its source by these; anonymisers sometimes blank them.
REFERENCE_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


def require_highdicom():
    """highdicom, or an error that says how to install it."""
    try:
        import highdicom
    except ImportError:
        raise RuntimeError(
            f'--output-type dicom_seg needs highdicom, which is not installed: pip install "ctfm[{EXTRA}]"'
        ) from None
    return highdicom


def read_series(folder: str | Path) -> list:
    """The instances of the one DICOM series in ``folder`` (headers only), sorted along the slice normal."""
    import pydicom

    datasets = []
    for path in sorted(p for p in Path(folder).iterdir() if p.is_file()):
        try:
            datasets.append(pydicom.dcmread(path, stop_before_pixels=True))
        except pydicom.errors.InvalidDicomError:
            continue  # DICOMDIR-less folders often hold a stray text file
    blank = [k for k in REFERENCE_UIDS if any(not ds.get(k) for ds in datasets)]
    if blank:
        raise ValueError(f"{folder}: its DICOM files have no {', '.join(blank)} (removed by an anonymiser?). A DICOM SEG "
                         "references its source images by these UIDs: give the series as the scanner or PACS exported "
                         "it, or use --output-type nifti.")
    series = {ds.SeriesInstanceUID for ds in datasets}
    if len(series) != 1:
        raise ValueError(f"{folder}: holds {len(series)} DICOM series; a DICOM SEG references exactly one. "
                         "Give a folder holding a single series.")
    normal = np.cross(*np.asarray(datasets[0].ImageOrientationPatient, dtype=float).reshape(2, 3))
    return sorted(datasets, key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float))))


def frames_of(label_map: torch.Tensor, sources: list) -> np.ndarray:
    """The (slices, rows, columns) array of ``label_map`` (channel-first, on the series' grid, RAS affine),
    one frame per source instance in ``sources`` order, found by each instance's position."""
    lab = np.asarray(label_map[0])
    to_voxel = np.linalg.inv(np.asarray(label_map.affine, dtype=np.float64))
    frames = []
    for ds in sources:
        lps = np.asarray(ds.ImagePositionPatient, dtype=np.float64)
        i, j, k = (to_voxel @ np.array([-lps[0], -lps[1], lps[2], 1.0]))[:3]  # DICOM LPS -> RAS -> voxel
        if abs(i) > 0.01 or abs(j) > 0.01 or abs(k - round(k)) > 0.01 or not 0 <= round(k) < lab.shape[2]:
            raise ValueError(f"instance {ds.SOPInstanceUID} does not lie on a slice of the label map's grid; "
                             "the label map must be on the series' own grid (voxel order x, y, slice).")
        frames.append(lab[:, :, int(round(k))].T)  # x runs along a row (columns), y down the rows
    return np.stack(frames)


def write_dicom_seg(label_map: torch.Tensor, series: str | Path, names: Mapping[int, str], path: str | Path) -> Path:
    """Write the structures of ``names`` present in ``label_map`` as a DICOM SEG of the series in ``series``."""
    hd = require_highdicom()
    import pydicom
    from pydicom.sr.codedict import codes

    sources = read_series(series)
    frames = frames_of(label_map, sources)
    present = [i for i in names if (frames == i).any()]
    if not present:
        raise ValueError(f"{series}: none of the chosen structures was found, so there is no segment to write; "
                         "no DICOM SEG written.")
    numbered = np.zeros_like(frames, dtype=np.uint8)  # segment numbers 1..N, as DICOM SEG requires
    for number, i in enumerate(present, 1):
        numbered[frames == i] = number
    anatomy = hd.sr.CodedConcept("91723000", "SCT", "Anatomical structure")
    algorithm = hd.AlgorithmIdentificationSequence(
        name="CT-FM whole-body segmentation", version=ctfm.__version__, family=codes.cid7162.ArtificialIntelligence
    )
    segments = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=names[i], segmented_property_category=anatomy,
            segmented_property_type=anatomy, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm, tracking_id=f"{names[i]} (class-map id {i})",
            tracking_uid=hd.UID(),
        )
        for number, i in enumerate(present, 1)
    ]  # fmt: skip
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=numbered, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments, series_instance_uid=hd.UID(), series_number=9001,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="CT-FM", manufacturer_model_name="ctfm segment",
        software_versions=ctfm.__version__, device_serial_number="none", omit_empty_frames=True,
    )  # fmt: skip
    path = Path(path)
    with atomic_path(path) as tmp:
        pydicom.dcmwrite(tmp, seg, enforce_file_format=True)
    return path
