"""CQ500 -> a head-CT triage test datalist: one normal/abnormal label and one DICOM series per scan.

Labels come from CQ500's published ``reads.csv`` (columns ``name``, ``Category`` and, for each of
the three readers R1-R3, ``R<k>:ICH``, ``R<k>:IPH``, ``R<k>:IVH``, ``R<k>:SDH``, ``R<k>:EDH``,
``R<k>:SAH``, ``R<k>:BleedLocation-Left``, ``R<k>:BleedLocation-Right``, ``R<k>:ChronicBleed``,
``R<k>:Fracture``, ``R<k>:CalvarialFracture``, ``R<k>:OtherFracture``, ``R<k>:MassEffect``,
``R<k>:MidlineShift``). The rule, ``rule="any"`` (default, what the CT-FM authors did in
``data/get_datalist.py::get_cq500_datalist``): a scan is abnormal (1) when any reader marked any
finding, else normal (0); this gives about 55% abnormal, as the paper reports. ``rule="majority"``:
abnormal when at least two of the three readers marked the same finding.

Series: a study folder (``CQ500CT<N> CQ500CT<N>/Unknown Study/<series>/``) holds several DICOM
series. Chosen is an axial, non-contrast, soft-tissue series with at least 10 slices; among those,
the one whose slice thickness is closest to 5 mm (the triage spacing), then the one with most
slices. Bone-kernel, contrast-enhanced (post contrast), scout/localizer and reformatted (non-axial)
series are never chosen. Each entry records the chosen series' description and slice thickness;
studies without a usable series are listed under "skipped" with the reason.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctfm.datasets.datalist import refuse_existing, write_datalist

RULES = ("any", "majority")
TARGET_THICKNESS_MM = 5.0
MIN_SLICES = 10
READERS = ("R1", "R2", "R3")
STUDY_PATTERN = re.compile(r"CQ500-?CT-?(\d+)", re.IGNORECASE)


# --- Labels -----------------------------------------------------------------------------------
def read_labels(reads_csv: str | os.PathLike, rule: str = "any") -> dict[str, dict]:
    """``name -> {"label": 0/1, "findings": [finding marked by the rule]}`` from reads.csv."""
    if rule not in RULES:
        raise ValueError(f"rule {rule!r} is not one of {RULES}")
    with open(reads_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = list(rows[0]) if rows else []
    findings = sorted({c.split(":", 1)[1] for c in columns if c.startswith("R1:")})
    if "name" not in columns or not findings:
        raise ValueError(f"{reads_csv} is not CQ500's reads.csv: expected the columns name, Category, R1:ICH, ...; "
                         f"found {columns[:6]}.")
    labels = {}
    for row in rows:
        votes = {f: sum(_flag(row.get(f"{r}:{f}"), reads_csv, row["name"]) for r in READERS) for f in findings}
        marked = [f for f, v in votes.items() if v >= (1 if rule == "any" else 2)]
        labels[row["name"]] = {"label": int(bool(marked)), "findings": marked}
    return labels


def _flag(value, reads_csv, name) -> int:
    if value in (None, ""):
        return 0
    try:
        return int(float(value) > 0)
    except ValueError:
        raise ValueError(f"{reads_csv}, {name}: {value!r} is not a 0/1 read.") from None


# --- Series -----------------------------------------------------------------------------------
@dataclass
class Series:
    folder: Path
    description: str
    n_slices: int
    thickness: float | None
    reason: str  # why it cannot be used; "" when it can


def describe_series(folder: Path) -> Series:
    """Read one header of a DICOM series folder and decide whether the series can be used."""
    import pydicom

    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    description = str(header.get("SeriesDescription", "") or folder.name)
    text = f"{description} {folder.name}".upper()
    kernel = str(header.get("ConvolutionKernel", "")).upper()
    image_type = [str(v).upper() for v in header.get("ImageType", [])]
    thickness = float(header.SliceThickness) if header.get("SliceThickness") not in (None, "") else None
    reason = ""
    if "LOCALIZER" in image_type or re.search(r"SCOUT|TOPO|LOCALI[SZ]ER", text):
        reason = "scout/localizer"
    elif "BONE" in text or "BONE" in kernel:
        reason = "bone kernel"
    elif header.get("ContrastBolusAgent") or re.search(r"POST|C\+|(?<!PRE )(?<!NON )(?<!NON-)CONTRAST", text):
        reason = "contrast-enhanced"
    elif not _is_axial(header):
        reason = "not axial"
    elif len(files) < MIN_SLICES:
        reason = f"only {len(files)} slices"
    return Series(folder, description, len(files), thickness, reason)


def _is_axial(header) -> bool:
    cosines = header.get("ImageOrientationPatient")
    if cosines is None:
        return True
    normal = np.cross(np.asarray(cosines[:3], float), np.asarray(cosines[3:], float))
    return abs(normal[2]) > 0.9


def choose_series(study: Path) -> tuple[Series | None, list[Series]]:
    """The series of a study to use (see module docstring), and every series seen."""
    folders = sorted({p.parent for p in study.rglob("*") if p.is_file() and _looks_dicom(p)})
    seen = [describe_series(f) for f in folders]
    usable = [s for s in seen if not s.reason]
    if not usable:
        return None, seen
    def rank(s: Series):
        distance = abs(s.thickness - TARGET_THICKNESS_MM) if s.thickness else float("inf")
        return distance, -s.n_slices, s.folder.name
    return min(usable, key=rank), seen


def _looks_dicom(path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    with open(path, "rb") as f:
        return f.read(132)[128:132] == b"DICM"


# --- The datalist -----------------------------------------------------------------------------
def convert_cq500(
    cq500_dir: str | os.PathLike,
    output: str | os.PathLike,
    reads: str | os.PathLike | None = None,
    rule: str = "any",
    overwrite: bool = False,
) -> Path:
    """Write the CQ500 test datalist (see module docstring); returns its path."""
    from tqdm import tqdm

    from ctfm import __version__

    root = Path(cq500_dir)
    reads_csv = Path(reads) if reads else root / "reads.csv"
    if not reads_csv.is_file():
        raise FileNotFoundError(f"{reads_csv} does not exist: give --reads the CQ500 reads.csv (or put it in --cq500-dir).")
    refuse_existing(output, overwrite)
    labels = read_labels(reads_csv, rule)
    studies = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        match = STUDY_PATTERN.match(folder.name)
        if match:
            studies[f"CQ500-CT-{int(match.group(1))}"] = folder
    entries, skipped = [], []
    for name in tqdm(sorted(labels, key=_number), desc="CQ500 studies", unit="study"):
        if name not in studies:
            skipped.append({"id": name, "reason": f"no study folder CQ500CT{_number(name)} in {root}"})
            continue
        chosen, seen = choose_series(studies[name])
        if chosen is None:
            reasons = "; ".join(f"{s.description}: {s.reason}" for s in seen) or "no DICOM files"
            skipped.append({"id": name, "reason": f"no usable series ({reasons})"})
            continue
        entries.append({"id": name, "image": chosen.folder.relative_to(root).as_posix(), "label": labels[name]["label"],
                        "findings": labels[name]["findings"], "series": chosen.description,
                        "slice_thickness_mm": chosen.thickness, "n_slices": chosen.n_slices})
    datalist = {
        "name": "CQ500 head CT triage (external test)",
        "description": f"CQ500 scans with labels 0 = normal, 1 = abnormal (rule: {rule}); test only",
        "labels": {"0": "normal", "1": "abnormal"},
        "testing": entries,
        "skipped": skipped,
        "source": {"dataset": "CQ500", "url": "http://headctstudy.qure.ai/dataset", "reads": str(reads_csv)},
        "converter": {"tool": "ctfm convert-cq500", "ctfm_version": __version__, "rule": rule,
                      "series": f"axial non-contrast soft tissue, >= {MIN_SLICES} slices, thickness closest to "
                                f"{TARGET_THICKNESS_MM} mm"},
    }
    return write_datalist(datalist, output, overwrite)


def _number(name: str) -> int:
    match = STUDY_PATTERN.match(name)
    return int(match.group(1)) if match else -1
