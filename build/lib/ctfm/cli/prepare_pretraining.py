"""Turn CT scans (DICOM series folders, NIfTI, NRRD) into the CT-FM pretraining cache.

Each scan is checked against the paper's quality filters (slice thickness 1..5 mm, more than 50
slices, one image per position, no localizer), then read the CT-FM way (SPL, 3 x 1 x 1 mm,
foreground crop on HU > 0) and stored as one memory-mappable ``int16`` Hounsfield-unit ``.npy``
(clipped to -1024..2048 HU, the range CT-FM scales to 0..1). A manifest CSV per shard records every
scan: ``ok`` with its cache file, ``filtered`` or ``failed`` with the reason. ``datalist.json``
(the bundle's ``datalist``; ``dataset_dir`` is the cache folder) lists the ``ok`` scans of all shards.

The filters read DICOM headers only (pydicom, no pixels). NIfTI/NRRD files carry no DICOM header:
for them the slice count and the spacing along the through-plane axis (as slice thickness) are
checked, one-image-per-position and localizer cannot be, and the manifest says so.

Work runs in parallel worker processes; a killed run continues where it stopped (finished scans
are in the manifest and skipped; files are written atomically). ``--shard i --num-shards n`` takes
every n-th scan, so a cluster array job spreads a 148,000-scan list over many machines, each with
its own manifest; the last shard to finish (or ``--merge``) writes the complete datalist.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctfm.pretraining_cache import preprocess_to_hu

DESCRIPTION = __doc__
EXAMPLES = """  ctfm prepare-pretraining --output-dir cache/ --workers 8 scans/*.nii.gz dicom/series_*/
  ctfm prepare-pretraining --output-dir cache/ --list idc_manifest.csv --shard $SLURM_ARRAY_TASK_ID --num-shards 64
  ctfm prepare-pretraining --output-dir cache/ --merge      # rebuild datalist.json from every shard's manifest
"""

MANIFEST_DIR = "manifests"
SCANS_DIR = "scans"
DATALIST = "datalist.json"
MANIFEST_COLUMNS = ("scan_id", "source", "status", "reason", "cache_file", "shape", "seconds")
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".npy")


@dataclass(frozen=True)
class QualityFilters:
    """The paper's selection (supplement S1); the defaults are the paper's values."""

    min_slice_thickness: float = 1.0  # mm
    max_slice_thickness: float = 5.0  # mm
    min_slices_exclusive: int = 50  # "num_instances > 50"


# --- Reading scans the CT-FM way ----------------------------------------------------------------


# --- Quality filters --------------------------------------------------------------------------


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


# --- The cache ----------------------------------------------------------------------------------


def scan_id(source: str | os.PathLike) -> str:
    """A stable, file-system-safe id: the file or folder name plus a hash of the absolute path."""
    path = Path(source)
    stem = path.name
    for suffix in IMAGE_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[-60:] or "scan"
    return f"{stem}-{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]}"


def cache_file(output_dir: Path, sid: str) -> Path:
    """``scans/<2 hash characters>/<id>.npy``: 256 sub-folders keep 148,000 files browsable."""
    return output_dir / SCANS_DIR / sid[-2:] / f"{sid}.npy"


def _process(job: tuple[str, str, QualityFilters]) -> dict:
    """Filter and cache one scan (runs in a worker process); never raises."""
    source, output_dir, filters = job
    sid, t0 = scan_id(source), time.perf_counter()
    row = {"scan_id": sid, "source": source, "status": "ok", "reason": "", "cache_file": "", "shape": "", "seconds": ""}
    try:
        info = inspect_scan(Path(source))
        problems = quality_problems(info, filters)
        if problems:
            row.update(status="filtered", reason="; ".join(problems))
        else:
            volume = preprocess_to_hu(source)
            dest = cache_file(Path(output_dir), sid)
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                np.save(f, volume)
            os.replace(tmp, dest)  # atomic: a killed run never leaves half a file under the final name
            row.update(cache_file=str(dest.relative_to(output_dir)), shape="x".join(map(str, volume.shape)),
                       reason=unchecked_filters(info))
    except Exception as err:  # noqa: BLE001 - one bad scan is recorded, never stops the others
        from ctfm.io import root_cause  # our clear error inside MONAI's wrappers

        cause = root_cause(err)
        row.update(status="failed", reason=f"{type(cause).__name__}: {cause}".replace("\n", " ")[:500])
    row["seconds"] = f"{time.perf_counter() - t0:.2f}"
    return row


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # the parallelism is the worker processes


def _reason_kind(row: dict) -> str:
    """A reason without its numbers, to count drops by kind ("N slices (the paper keeps more than N)")."""
    first = row["reason"].split(";")[0]
    return f"failed: {first.split(':')[0]}" if row["status"] == "failed" else re.sub(r"\d+(\.\d+)?", "N", first)


def read_manifests(output_dir: Path) -> list[dict]:
    rows = []
    for manifest in sorted((output_dir / MANIFEST_DIR).glob("shard-*.csv")):
        with open(manifest, newline="") as f:
            rows += list(csv.DictReader(f))
    return rows


def write_datalist(output_dir: str | os.PathLike) -> Path:
    """``datalist.json`` with every ``ok`` scan of every shard (paths relative to ``output_dir``)."""
    output_dir = Path(output_dir)
    rows = read_manifests(output_dir)
    ok = sorted({r["cache_file"] for r in rows if r["status"] == "ok"})
    datalist = {
        "description": "CT-FM pretraining cache: int16 HU, SPL, 3 x 1 x 1 mm, foreground-cropped (ctfm prepare-pretraining)",
        "spacing_mm": [3.0, 1.0, 1.0],
        "orientation": "SPL",
        "counts": dict(Counter(r["status"] for r in rows)),
        "training": [{"image": f} for f in ok],
    }
    path = output_dir / DATALIST
    tmp = path.with_name(f".{DATALIST}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(datalist, indent=1))
    os.replace(tmp, path)
    return path


def prepare_cache(
    sources: list[str],
    output_dir: str | os.PathLike,
    shard: int = 0,
    num_shards: int = 1,
    workers: int = 1,
    filters: QualityFilters = QualityFilters(),
) -> dict:
    """Filter and cache this shard's scans (those not done yet); returns counts and the datalist path."""
    from tqdm import tqdm

    if not 0 <= shard < num_shards:
        raise ValueError(f"--shard {shard} is not in 0..{num_shards - 1} (--num-shards {num_shards})")
    output_dir = Path(output_dir).resolve()
    mine = [str(s) for i, s in enumerate(sources) if i % num_shards == shard]
    manifest = output_dir / MANIFEST_DIR / f"shard-{shard:05d}-of-{num_shards:05d}.csv"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if manifest.exists():
        with open(manifest, newline="") as f:
            done = {r["source"] for r in csv.DictReader(f)}
    todo = [s for s in mine if s not in done]
    print(f"shard {shard}/{num_shards}: {len(mine)} scan(s), {len(mine) - len(todo)} already done, {len(todo)} to do")
    counts, reasons = Counter(), Counter()
    new = not manifest.exists()
    with open(manifest, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        if new:
            writer.writeheader()
        jobs = [(s, str(output_dir), filters) for s in todo]
        if workers > 1:
            import multiprocessing as mp

            pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker)
            results = pool.imap_unordered(_process, jobs)
        else:
            pool, results = None, map(_process, jobs)
        try:
            for row in tqdm(results, total=len(jobs), desc="preparing", unit="scan"):
                writer.writerow(row)
                f.flush()  # the manifest is the resume point: every finished scan is on disk
                counts[row["status"]] += 1
                if row["status"] != "ok":
                    reasons[_reason_kind(row)] += 1
        finally:
            if pool is not None:
                pool.close()
                pool.join()
    datalist = write_datalist(output_dir)
    return {"counts": dict(counts), "dropped_by_reason": dict(reasons), "manifest": manifest, "datalist": datalist}


def read_source_list(path: str | os.PathLike) -> list[str]:
    """Scans listed in a text file (one path a line), a CSV with a ``local_path`` or ``path`` column
    (e.g. ``ctfm idc-manifest``'s manifest), or a decathlon datalist (every list's ``image``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: list of scans not found")
    base = path.parent
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        items = [d["image"] for v in data.values() if isinstance(v, list) for d in v if isinstance(d, dict) and "image" in d]
        return [str(p if Path(p).is_absolute() else base / p) for p in items]
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            column = next((c for c in ("local_path", "path") if c in (reader.fieldnames or [])), None)
            if column is None:
                raise ValueError(f"{path}: a CSV list needs a 'local_path' or 'path' column; found {reader.fieldnames}")
            return [r[column] for r in reader if r[column]]
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


# --- Command line -------------------------------------------------------------------------------


def add_arguments(parser) -> None:
    parser.add_argument("inputs", nargs="*", help="DICOM series folders, NIfTI or NRRD files")
    parser.add_argument("--list", dest="lists", action="append", default=[],
                        help="file listing scans: .txt (one a line), .csv (local_path/path column), or a datalist .json")
    parser.add_argument("--output-dir", required=True, help="the cache folder (the bundle's dataset_dir)")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="worker processes")
    parser.add_argument("--shard", type=int, default=0, help="this shard's index, 0..num-shards-1")
    parser.add_argument("--num-shards", type=int, default=1, help="how many shards the list is split into")
    parser.add_argument("--min-slices", type=int, default=QualityFilters.min_slices_exclusive,
                        help="keep scans with MORE than this many slices (paper: 50)")
    parser.add_argument("--slice-thickness", type=float, nargs=2, metavar=("MIN", "MAX"),
                        default=(QualityFilters.min_slice_thickness, QualityFilters.max_slice_thickness),
                        help="keep slice thickness in MIN..MAX mm (paper: 1 5)")
    parser.add_argument("--merge", action="store_true", help="only rebuild datalist.json from all shards' manifests")


def run(args) -> int:
    if args.merge:
        path = write_datalist(args.output_dir)
        print(f"datalist of {len(json.loads(path.read_text())['training'])} scan(s): {path}")
        return 0
    sources = list(args.inputs)
    for listed in args.lists:
        sources += read_source_list(listed)
    if not sources:
        raise ValueError("no scans given: pass folders/files or --list FILE")
    filters = QualityFilters(args.slice_thickness[0], args.slice_thickness[1], args.min_slices)
    result = prepare_cache(sources, args.output_dir, args.shard, args.num_shards, args.workers, filters)
    print(f"done: {result['counts']}; manifest {result['manifest']}; datalist {result['datalist']}")
    for reason, n in sorted(result["dropped_by_reason"].items(), key=lambda kv: -kv[1]):
        print(f"  dropped {n:6d}  {reason}")
    return 0


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    sys.exit(run(p.parse_args()))
