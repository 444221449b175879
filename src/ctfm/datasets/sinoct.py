"""SinoCT -> a head-CT triage datalist with a seeded 8:1:1 training/validation/testing split.

Reads the SinoCT folder in the layout the CT-FM authors read it (project-lighter/CT-FM,
data/get_datalist.py): ``labels.csv`` with the columns ``patient_id`` and ``label``, where ``label``
is the one-hot pair (normal, abnormal), ``"1,0"`` = normal and ``"0,1"`` = abnormal (0/1 and the words
normal/abnormal are accepted too), and one folder per patient holding its scan: ``nrrd/scan.nrrd``,
or a single NIfTI/NRRD file, or a folder of DICOM files.

The default split is the authors' exactly (``split="authors"``, their ``_get_patient_dirs``): the
patient folders sorted by name, shuffled with Python's ``random.seed(seed); random.shuffle``, then cut
at ``int(0.8 n)`` and ``int(0.9 n)``; so seed 0 reproduces the paper's 7,823 / 978 / 978 lists.
``split="stratified"`` splits class by class instead (80/10/10 of the normal scans and of the abnormal
ones, shuffled with ``seed``), so every list has the class balance of the whole set. Writes a decathlon-style
JSON with "training", "validation" and "testing" lists of {"id", "image", "label"}; image paths are
relative to the SinoCT folder (the bundle's dataset_dir).
"""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import numpy as np

from ctfm.datasets.datalist import write_datalist
from ctfm.io import is_volume_file

LABELS_FILE = "labels.csv"
SPLIT_RATIOS = (0.8, 0.1, 0.1)
SPLITS = ("training", "validation", "testing")
SPLIT_METHODS = ("authors", "stratified")
NORMAL, ABNORMAL = {"1,0", "0", "normal"}, {"0,1", "1", "abnormal"}


def parse_label(value: str, where: str) -> int:
    """0 (normal) or 1 (abnormal) from SinoCT's one-hot ``"1,0"``/``"0,1"`` (or 0/1, normal/abnormal)."""
    text = str(value).replace(" ", "").replace('"', "").lower()
    if text in NORMAL:
        return 0
    if text in ABNORMAL:
        return 1
    raise ValueError(f"{where}: label {value!r} is not '1,0' (normal) or '0,1' (abnormal).")


def find_scan(folder: Path) -> Path:
    """The one scan of a patient folder: ``nrrd/scan.nrrd``, else its only volume file, else its DICOM folder."""
    preferred = folder / "nrrd" / "scan.nrrd"
    if preferred.is_file():
        return preferred
    volumes = sorted(p for p in folder.rglob("*") if is_volume_file(p))
    dicom_dirs = sorted({p.parent for p in folder.rglob("*.dcm")})
    found = volumes + dicom_dirs
    if len(found) == 1:
        return found[0]
    problem = "holds no NIfTI/NRRD file or DICOM series" if not found else f"holds several scans: {found[:4]}"
    raise ValueError(f"patient folder {folder} {problem}. Keep exactly one scan per patient folder.")


def authors_split(ids: list[str], seed: int, ratios=SPLIT_RATIOS) -> dict[str, list[str]]:
    """The CT-FM authors' split: sorted ids, ``random.seed(seed)`` + ``random.shuffle``, cut at int(0.8 n), int(0.9 n)."""
    order = sorted(ids)
    random.seed(seed)
    random.shuffle(order)
    train_end = int(ratios[0] * len(order))
    val_end = int((ratios[0] + ratios[1]) * len(order))  # the authors' expression, float rounding included
    return {"training": order[:train_end], "validation": order[train_end:val_end], "testing": order[val_end:]}


def stratified_split(ids: list[str], labels: list[int], seed: int, ratios=SPLIT_RATIOS) -> dict[str, list[str]]:
    """Split ``ids`` into training/validation/testing by ``ratios``, class by class, shuffled with ``seed``."""
    rng = np.random.default_rng(seed)
    splits: dict[str, list[str]] = {name: [] for name in SPLITS}
    for cls in sorted(set(labels)):
        members = sorted(i for i, y in zip(ids, labels) if y == cls)
        members = [members[k] for k in rng.permutation(len(members))]
        n_val, n_test = round(ratios[1] * len(members)), round(ratios[2] * len(members))
        n_train = len(members) - n_val - n_test
        splits["training"] += members[:n_train]
        splits["validation"] += members[n_train : n_train + n_val]
        splits["testing"] += members[n_train + n_val :]
    return {name: sorted(members) for name, members in splits.items()}


def convert_sinoct(
    sinoct_dir: str | os.PathLike, output: str | os.PathLike, seed: int = 0, overwrite: bool = False,
    split: str = "authors",
) -> Path:
    """Write the SinoCT triage datalist (see module docstring); returns its path.

    ``split``: ``"authors"`` (default, the paper's lists) or ``"stratified"`` (class-balanced lists).
    """
    from ctfm import __version__

    root = Path(sinoct_dir)
    labels_csv = root / LABELS_FILE
    if not labels_csv.is_file():
        raise FileNotFoundError(f"{labels_csv} does not exist: --sinoct-dir must hold SinoCT's {LABELS_FILE}.")
    with open(labels_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"patient_id", "label"} <= set(rows[0]):
        raise ValueError(f"{labels_csv} must have the columns patient_id and label; found {list(rows[0]) if rows else []}.")
    labels = {r["patient_id"]: parse_label(r["label"], f"{labels_csv}, patient {r['patient_id']}") for r in rows}
    missing = [pid for pid in labels if not (root / pid).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} patient(s) of {labels_csv} have no folder in {root}: {missing[:5]}. "
            "Download the complete dataset or remove those rows."
        )
    if split not in SPLIT_METHODS:
        raise ValueError(f"split {split!r} is not one of {SPLIT_METHODS}.")
    unlabelled = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in labels)
    if split == "authors" and unlabelled:
        # The authors split every patient folder; one without a label would shift everyone's place.
        raise ValueError(
            f"{len(unlabelled)} folder(s) in {root} have no row in {labels_csv}: {unlabelled[:5]}. The authors' split "
            "shuffles every patient folder, so move these out of the SinoCT folder (or use --split stratified)."
        )
    scans = {pid: find_scan(root / pid).relative_to(root).as_posix() for pid in labels}
    ids = list(labels)
    if split == "authors":
        splits = authors_split(ids, seed)
    else:
        splits = {name: members for name, members in stratified_split(ids, [labels[i] for i in ids], seed).items()}
    datalist = {
        "name": "SinoCT head CT triage",
        "description": "SinoCT scans with labels 0 = normal, 1 = abnormal; "
        + ("the CT-FM authors' 8:1:1 split" if split == "authors" else "class-stratified 8:1:1 split"),
        "labels": {"0": "normal", "1": "abnormal"},
        **{name: [{"id": i, "image": scans[i], "label": labels[i]} for i in members] for name, members in splits.items()},
        "source": {"dataset": "SinoCT", "doi": "https://doi.org/10.71718/6TFS-TM78", "labels_file": str(labels_csv)},
        "converter": {"tool": "ctfm convert-sinoct", "ctfm_version": __version__, "seed": seed, "split": split,
                      "ratios": list(SPLIT_RATIOS)},
    }
    return write_datalist(datalist, output, overwrite)
