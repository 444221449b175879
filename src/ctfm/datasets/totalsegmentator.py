"""Turn the TotalSegmentator v2 dataset into training data: one label map per case and a datalist.

Input is the published layout (Zenodo record 10047292)::

    <source>/meta.csv                       ";"-separated, columns image_id ... split (train / val / test)
    <source>/s0000/ct.nii.gz
    <source>/s0000/segmentations/<structure>.nii.gz   one binary mask per structure (117 files)

Output (``output``): ``labels/<case>.nii.gz`` (uint8 TotalSegmentator v2 "total" ids on the CT's
grid) and ``datalist.json`` with "training" / "validation" / "testing" and, under "split", which split
made them. The split is the paper's, VISTA3D's (928 / 52 / 248 cases), when its file is given
(``split_file``: the datalist JSON of the MONAI VISTA3D bundle, ``TotalSegmentatorV2_5_folds.json``;
not shipped here, it is not ours to redistribute); the dataset's own ``meta.csv`` split otherwise.

VISTA3D's file lists 980 "training" cases (five folds) and 248 "testing" cases. The authors held out
52 of the 980 for validation; which 52 is not public, so, unless the file has its own "validation"
list, the same share (52 of 980, rounded, at least one) is drawn from the training cases with a
fixed seed: the counts and the test set are the paper's, the validation cases a reproducible draw.

Image paths point at the source CTs, relative to the output folder (so ``dataset_dir`` is the
output folder). Label maps already written are kept, so a killed run resumes where it stopped;
the datalist is written last, and an existing one is never replaced without ``overwrite``.
"""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path

from ctfm.datasets.datalist import refuse_existing, write_datalist
from ctfm.io import atomic_path, strip_volume_suffix

SPLITS = {"train": "training", "val": "validation", "test": "testing"}
DATALIST = "datalist.json"
SPLIT_CHOICES = ("official", "vista3d")
VISTA3D_VALIDATION = (52, 980)  # the paper's validation cases, of VISTA3D's training cases
VISTA3D_SEED = 0


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


def read_vista3d_split(split_file: Path, cases: set[str]) -> dict[str, str]:
    """Case id -> datalist split name, from VISTA3D's datalist JSON (see module docstring)."""
    try:
        listing = json.loads(split_file.read_text())
        parts = {name: [Path(item["image"]).parent.name for item in listing.get(name, [])] for name in SPLITS.values()}
    except FileNotFoundError:
        raise FileNotFoundError(f"{split_file}: no such split file; pass VISTA3D's TotalSegmentatorV2_5_folds.json.") from None
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise ValueError(
            f"{split_file}: not a VISTA3D datalist ({err}); expected JSON with \"training\" and \"testing\" lists "
            'of {"image": "s0000/ct.nii.gz", ...} (the MONAI VISTA3D bundle\'s TotalSegmentatorV2_5_folds.json).'
        ) from None
    if not parts["training"] or not parts["testing"]:
        raise ValueError(f"{split_file}: needs non-empty \"training\" and \"testing\" lists (VISTA3D's datalist format).")
    if not parts["validation"]:
        share, of = VISTA3D_VALIDATION
        training = sorted(parts["training"])
        held_out = set(random.Random(VISTA3D_SEED).sample(training, max(1, round(len(training) * share / of))))
        parts["training"] = [c for c in training if c not in held_out]
        parts["validation"] = sorted(held_out)
    splits = {case: name for name, listed in parts.items() for case in listed}
    unlisted, absent = sorted(cases - set(splits)), sorted(set(splits) - cases)
    if unlisted or absent:
        raise ValueError(
            f"{split_file} does not match the dataset: {len(unlisted)} case(s) of the source are not in it "
            f"(e.g. {unlisted[:3]}) and {len(absent)} listed case(s) are not in the source (e.g. {absent[:3]}). "
            "Use the split file of this dataset version (TotalSegmentator v2, 1228 cases), or --split official."
        )
    return splits


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


def convert_totalsegmentator(
    source: str | os.PathLike,
    output: str | os.PathLike,
    overwrite: bool = False,
    split: str | None = None,
    split_file: str | os.PathLike | None = None,
) -> Path:
    """Write ``labels/<case>.nii.gz`` and ``datalist.json`` (see module docstring); returns the datalist path.

    Args:
        split: ``"vista3d"`` (the paper's; needs ``split_file``) or ``"official"`` (``meta.csv``);
            ``None`` picks ``"vista3d"`` when ``split_file`` is given, ``"official"`` otherwise.
        split_file: VISTA3D's datalist JSON.
    """
    import nibabel as nib

    from ctfm.registry import TOTALSEG_NUM_CLASSES, totalsegmentator_ids

    source, output = Path(source), Path(output)
    datalist_path = refuse_existing(output / DATALIST, overwrite)
    split = split or ("vista3d" if split_file else "official")
    if split not in SPLIT_CHOICES:
        raise ValueError(f"split {split!r}: expected one of {SPLIT_CHOICES}.")
    if split == "vista3d" and not split_file:
        raise ValueError(
            "--split vista3d needs --split-file: VISTA3D's TotalSegmentatorV2_5_folds.json (from the MONAI VISTA3D "
            "bundle or github.com/Project-MONAI/VISTA, vista3d/data/jsons); or use --split official."
        )
    splits = read_meta(source)
    if split == "vista3d":
        splits = read_vista3d_split(Path(split_file), set(splits))
        split_used = f"vista3d ({Path(split_file).name}, validation drawn with seed {VISTA3D_SEED} unless listed)"
    else:
        split_used = "official (meta.csv)"
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
        "split": split_used,
        "license": "CC BY 4.0 (TotalSegmentator dataset, Wasserthal et al.)",
        "cases_with_missing_structure_files": incomplete,
        **lists,
    }
    return write_datalist(datalist, datalist_path, overwrite)
