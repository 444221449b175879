"""Writing phantom datasets: deterministic bytes (gzip without a timestamp), never a silent overwrite."""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np

from ctfm import __version__
from ctfm.data.phantoms.body import make_body_phantom
from ctfm.data.phantoms.head import make_head_phantom
from ctfm.data.phantoms.tables import BODY_STRUCTURES, _ts_ids
from ctfm.io import atomic_path


DATALIST = "datalist.json"


def _gz(raw: bytes) -> bytes:
    return gzip.compress(raw, compresslevel=6, mtime=0)  # no timestamp: the same seed, the same bytes


def _nifti_bytes(img: nib.Nifti1Image) -> bytes:
    return _gz(img.to_bytes())


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


def _same_content(path: Path, data: bytes) -> bool:
    """Whether a file already holds ``data`` (for .gz, the same uncompressed content counts)."""
    if not path.is_file():
        return False
    existing = path.read_bytes()
    if existing == data:
        return True
    if path.name.endswith(".gz"):
        try:
            return gzip.decompress(existing) == gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            return False
    return False


def _write_files(root: Path, produce: Callable[[], Iterator[tuple[str, bytes]]], overwrite: bool, what: str):
    """Write what ``produce()`` yields (relative path, bytes) under ``root``.

    If ``root`` already holds files, everything is checked first: a file that differs from what
    would be written stops the run before anything is written, unless ``overwrite``. Identical files
    are left alone, so a second run with the same seed does nothing. Each file is written to a
    temporary name and renamed, so a killed run never leaves a half-written file that looks valid.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} is a file, not a folder: pass an output folder")
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        differing, missing = [], 0
        for rel, data in produce():
            path = root / rel
            if path.exists() and not _same_content(path, data):
                differing.append(rel)
            missing += not path.exists()
        if differing:
            shown = ", ".join(differing[:3]) + (f" and {len(differing) - 3} more" if len(differing) > 3 else "")
            raise FileExistsError(
                f"{root} already holds {len(differing)} file(s) that differ from what {what} would write "
                f"({shown}); nothing was written. Pass overwrite=True (ctfm make-phantoms --overwrite) to "
                f"replace them, or choose an empty output folder."
            )
        if not missing:
            return
    for rel, data in produce():
        path = root / rel
        if _same_content(path, data):
            continue
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)


def _case_seed(seed: int, index: int) -> int:
    """Independent seed of case ``index``: a case does not change when ``num`` does."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _check_seed_num(seed, num=1) -> None:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(num, (int, np.integer)) or num < 1:
        raise ValueError(f"num must be a positive integer, got {num!r}")


def _generator(function: str, **params) -> dict:
    return {"function": f"ctfm.data.phantoms.{function}", "ctfm_version": __version__, **params}


def write_body_phantoms(
    output_dir: str | os.PathLike,
    num: int = 4,
    seed: int = 0,
    *,
    overwrite: bool = False,
    validation_fraction: float = 0.25,
    scale: float | None = None,
    spacing: tuple[float, float, float] | None = None,
    shape: tuple[int, int, int] | None = None,
    orientation: str | None = None,
    fov: str | None = None,
) -> Path:
    """Write ``num`` body phantoms and a decathlon-style datalist; returns the datalist's path.

    Layout: ``imagesTr/body_NNN.nii.gz`` (int16 HU), ``labelsTr/body_NNN.nii.gz`` (uint8
    TotalSegmentator ids), ``masksTr/body_NNN.nii.gz`` (body outline) and ``datalist.json`` with
    "training"/"validation" lists of {"image", "label", "body_mask"} relative to ``output_dir``,
    "labels" (id -> name of every structure the generator draws) and "cases" (what was drawn for
    each case). The last ``validation_fraction`` of the cases (at least one when ``num`` >= 2) form
    the validation list. Other arguments as in :func:`make_body_phantom`, the same for every case.
    """
    _check_seed_num(seed, num)
    n_val = min(num - 1, max(1, round(num * validation_fraction))) if num >= 2 else 0
    names = [f"body_{i:03d}" for i in range(num)]
    ids = _ts_ids(BODY_STRUCTURES)

    def produce():
        entries, cases = [], {}
        for i, name in enumerate(names):
            ph = make_body_phantom(_case_seed(seed, i), scale=scale, spacing=spacing, shape=shape,
                                   orientation=orientation, fov=fov)
            entry = {"image": f"imagesTr/{name}.nii.gz", "label": f"labelsTr/{name}.nii.gz",
                     "body_mask": f"masksTr/{name}.nii.gz"}
            for key, which in (("image", "image"), ("label", "label"), ("body_mask", "body")):
                yield entry[key], _nifti_bytes(ph.to_nifti(which))
            entries.append(entry)
            cases[name] = {**ph.info, "structures": sorted(ph.classes)}
        datalist = {
            "name": "ctfm body phantoms",
            "description": "CT-like trunks with TotalSegmentator v2 labels; images int16 HU, labels uint8 ids",
            "tensorImageSize": "3D",
            "modality": {"0": "CT"},
            "labels": {"0": "background", **{str(i): n for n, i in sorted(ids.items(), key=lambda kv: kv[1])}},
            "numTraining": num - n_val,
            "training": entries[: num - n_val],
            "validation": entries[num - n_val:],
            "generator": _generator("write_body_phantoms", seed=seed, num=num, scale=scale, spacing=spacing,
                                    shape=shape, orientation=orientation, fov=fov),
            "cases": cases,
        }
        yield DATALIST, _json_bytes(datalist)

    _write_files(Path(output_dir), produce, overwrite, f"write_body_phantoms(seed={seed}, num={num})")
    return Path(output_dir) / DATALIST


def _split_counts(n: int) -> tuple[int, int, int]:
    """Training, validation, testing counts of one class: ~60/20/20, each list non-empty from 3 cases."""
    if n >= 3:
        held = max(1, round(0.2 * n))
        return n - 2 * held, held, held
    return (n, 0, 0) if n < 2 else (1, 1, 0)


def write_head_phantoms(
    output_dir: str | os.PathLike,
    num: int = 8,
    seed: int = 0,
    *,
    bleed_fraction: float = 0.5,
    overwrite: bool = False,
    scale: float | None = None,
    spacing: tuple[float, float, float] | None = None,
    shape: tuple[int, int, int] | None = None,
    orientation: str | None = None,
    bleed_size: float = 1.0,
) -> Path:
    """Write ``num`` head phantoms for normal/abnormal triage and a datalist; returns the datalist's path.

    ``round(num * bleed_fraction)`` heads have a bleed (label 1), the others none (label 0); cases
    are shuffled, then split ~60/20/20 into "training"/"validation"/"testing" class by class, so
    every list has the same class balance. Entries are {"image", "label": 0 or 1, "bleed_mask"}.
    Layout: ``images/head_NNN.nii.gz`` (int16 HU), ``bleed_masks/head_NNN.nii.gz``, ``datalist.json``.
    """
    _check_seed_num(seed, num)
    if not 0 <= bleed_fraction <= 1:
        raise ValueError(f"bleed_fraction must be within 0..1, got {bleed_fraction!r}")
    n_abnormal = round(num * bleed_fraction)
    abnormal = np.random.default_rng([seed, 1]).permutation([1] * n_abnormal + [0] * (num - n_abnormal))
    split = [""] * num
    for cls in (0, 1):
        members = np.flatnonzero(abnormal == cls)
        counts = _split_counts(len(members))
        for j, i in enumerate(members):
            split[i] = "training" if j < counts[0] else "validation" if j < counts[0] + counts[1] else "testing"

    def produce():
        lists, cases = {"training": [], "validation": [], "testing": []}, {}
        for i in range(num):
            name = f"head_{i:03d}"
            ph = make_head_phantom(_case_seed(seed, i), bleed=bool(abnormal[i]), scale=scale, spacing=spacing,
                                   shape=shape, orientation=orientation, bleed_size=bleed_size)
            entry = {"image": f"images/{name}.nii.gz", "label": int(abnormal[i]),
                     "bleed_mask": f"bleed_masks/{name}.nii.gz"}
            yield entry["image"], _nifti_bytes(ph.to_nifti("image"))
            yield entry["bleed_mask"], _nifti_bytes(ph.to_nifti("bleed"))
            lists[split[i]].append(entry)
            cases[name] = ph.info
        datalist = {
            "name": "ctfm head phantoms",
            "description": "CT-like heads for triage; label 1 = intracranial bleed (abnormal), 0 = normal",
            "tensorImageSize": "3D",
            "modality": {"0": "CT"},
            "labels": {"0": "normal", "1": "abnormal"},
            **lists,
            "generator": _generator("write_head_phantoms", seed=seed, num=num, bleed_fraction=bleed_fraction,
                                    scale=scale, spacing=spacing, shape=shape, orientation=orientation),
            "cases": cases,
        }
        yield DATALIST, _json_bytes(datalist)

    _write_files(Path(output_dir), produce, overwrite, f"write_head_phantoms(seed={seed}, num={num})")
    return Path(output_dir) / DATALIST
