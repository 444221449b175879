"""Turn the TotalSegmentator v2 dataset into training data: one label map per case and a datalist.

Input is the published layout (Zenodo record 10047292)::

    <source>/meta.csv                       ";"-separated, columns image_id ... split (train / val / test)
    <source>/s0000/ct.nii.gz
    <source>/s0000/segmentations/<structure>.nii.gz   one binary mask per structure (117 files)

Output (``output``): ``labels/<case>.nii.gz`` (uint8 TotalSegmentator v2 "total" ids on the CT's
grid) and ``datalist.json`` with the official split as "training" / "validation" / "testing";
image paths point at the source CTs, relative to the output folder (so ``dataset_dir`` is the
output folder). Label maps already written are kept, so a killed run resumes where it stopped;
the datalist is written last, and an existing one is never replaced without ``overwrite``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from ctfm.datasets.datalist import refuse_existing, write_datalist
from ctfm.io import atomic_path, strip_volume_suffix

SPLITS = {"train": "training", "val": "validation", "test": "testing"}
DATALIST = "datalist.json"


def read_meta(source: Path) -> dict[str, str]:
    """Case id -> datalist split name, from ``meta.csv``."""
    meta = source / "meta.csv"
    if not meta.is_file():
        raise FileNotFoundError(
            f"{meta}: missing. --source must be the unpacked TotalSegmentator v2 folder (meta.csv + s0000/ ...)."
        )
    with open(meta, newline="") as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    if not rows or not {"image_id", "split"} <= set(rows[0]):
        raise ValueError(f"{meta}: expected ';'-separated columns image_id and split, got {list(rows[0]) if rows else []}.")
    unknown = sorted({r["split"] for r in rows} - set(SPLITS))
    if unknown:
        raise ValueError(f"{meta}: unknown split values {unknown}; expected {sorted(SPLITS)}.")
    return {r["image_id"]: SPLITS[r["split"]] for r in rows}


def case_label_map(case_dir: Path, name_to_id: dict[str, int]):
    """The label map of one case from its per-structure masks, as a NIfTI image on the CT's grid."""
    import nibabel as nib
    import numpy as np

    ct = nib.load(case_dir / "ct.nii.gz")
    label = np.zeros(ct.shape, dtype=np.uint8)
    masks = sorted((case_dir / "segmentations").glob("*.nii.gz"))
    unknown = [m.name for m in masks if strip_volume_suffix(m.name) not in name_to_id]
    if unknown:
        raise ValueError(
            f"{case_dir / 'segmentations'}: {unknown[:5]} are not TotalSegmentator v2 'total' structures; "
            "this converter reads the v2 dataset (117 structures, see `ctfm info`)."
        )
    for mask_path in masks:
        mask = nib.load(mask_path)
        if mask.shape != ct.shape or not np.allclose(mask.affine, ct.affine, atol=1e-3):
            raise ValueError(
                f"{mask_path}: not on the grid of {case_dir / 'ct.nii.gz'} (shape {mask.shape} vs {ct.shape}); "
                "the case is damaged, download it again."
            )
        label[np.asarray(mask.dataobj) > 0] = name_to_id[strip_volume_suffix(mask_path.name)]
    out = nib.Nifti1Image(label, ct.affine)
    out.set_qform(ct.affine, code=1)
    out.set_sform(ct.affine, code=1)
    return out, len(masks)


def convert_totalsegmentator(source: str | os.PathLike, output: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``labels/<case>.nii.gz`` and ``datalist.json`` (see module docstring); returns the datalist path."""
    import nibabel as nib

    from ctfm.registry import TOTALSEG_NUM_CLASSES, totalsegmentator_ids

    source, output = Path(source), Path(output)
    datalist_path = refuse_existing(output / DATALIST, overwrite)
    splits = read_meta(source)
    missing = [c for c in splits if not (source / c / "ct.nii.gz").is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} case(s) of {source / 'meta.csv'} have no ct.nii.gz, e.g. {source / missing[0]}; "
            "the download is incomplete."
        )
    name_to_id = totalsegmentator_ids()
    (output / "labels").mkdir(parents=True, exist_ok=True)
    lists: dict[str, list] = {name: [] for name in SPLITS.values()}
    incomplete = {}
    for n, (case, split) in enumerate(sorted(splits.items()), 1):
        label_path = output / "labels" / f"{case}.nii.gz"
        if overwrite or not label_path.exists():
            image, n_masks = case_label_map(source / case, name_to_id)
            if n_masks != TOTALSEG_NUM_CLASSES:
                incomplete[case] = n_masks
            with atomic_path(label_path) as tmp:  # a killed run never leaves a half-written label map
                nib.save(image, tmp)
            status = "written"
        else:
            status = "kept (already converted)"
        print(f"[{n}/{len(splits)}] {case} ({split}): {status}", flush=True)
        image_rel = os.path.relpath(source / case / "ct.nii.gz", output)
        lists[split].append({"image": image_rel, "label": f"labels/{case}.nii.gz"})
    datalist = {
        "name": "TotalSegmentator v2",
        "description": "converted by `ctfm convert-totalsegmentator`: per-structure masks -> one label map per case",
        "labels": {"0": "background", **{str(i): n for n, i in sorted(name_to_id.items(), key=lambda kv: kv[1])}},
        "source": str(source.resolve()),
        "license": "CC BY 4.0 (TotalSegmentator dataset, Wasserthal et al.)",
        "cases_with_missing_structure_files": incomplete,
        **lists,
    }
    return write_datalist(datalist, datalist_path, overwrite)
