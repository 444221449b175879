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
are in the manifest and skipped; files are written atomically). Shard ``i`` of ``n`` takes
every n-th scan, so a cluster array job spreads a 148,000-scan list over many machines, each with
its own manifest; the last shard to finish (or ``ctfm prepare-pretraining --merge``) writes the complete
datalist. The filters are :mod:`ctfm.pretraining.quality`, the cache format :mod:`ctfm.pretraining.cache`.
"""

from __future__ import annotations

import csv
import json
import os
import re
import time
from collections import Counter
from pathlib import Path

from ctfm.io import VOLUME_SUFFIXES, root_cause, scan_id, write_text_atomic
from ctfm.pretraining.cache import cache_file, preprocess_to_hu, write_scan_hu
from ctfm.pretraining.quality import QualityFilters, inspect_scan, quality_problems, unchecked_filters

MANIFEST_DIR = "manifests"
DATALIST = "datalist.json"
MANIFEST_COLUMNS = ("scan_id", "source", "status", "reason", "cache_file", "shape", "seconds")
# The volume formats, and NumPy arrays too: a .npy source loses its suffix in the scan id like a volume does.
SOURCE_SUFFIXES = VOLUME_SUFFIXES + (".npy",)


def _process(job: tuple[str, str, QualityFilters]) -> dict:
    """Filter and cache one scan (runs in a worker process); never raises."""
    source, output_dir, filters = job
    sid, t0 = scan_id(source, unique=True, suffixes=SOURCE_SUFFIXES), time.perf_counter()
    row = {"scan_id": sid, "source": source, "status": "ok", "reason": "", "cache_file": "", "shape": "", "seconds": ""}
    try:
        info = inspect_scan(Path(source))
        problems = quality_problems(info, filters)
        if problems:
            row.update(status="filtered", reason="; ".join(problems))
        else:
            volume = preprocess_to_hu(source)
            dest = write_scan_hu(volume, cache_file(output_dir, sid))
            row.update(cache_file=str(dest.relative_to(output_dir)), shape="x".join(map(str, volume.shape)),
                       reason=unchecked_filters(info))
    except Exception as err:  # noqa: BLE001 - one bad scan is recorded, never stops the others
        cause = root_cause(err)  # our clear error inside MONAI's wrappers
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


def write_cache_datalist(output_dir: str | os.PathLike) -> Path:
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
    return write_text_atomic(output_dir / DATALIST, json.dumps(datalist, indent=1))


def prepare_cache(
    sources: list[str],
    output_dir: str | os.PathLike,
    shard: int = 0,
    num_shards: int = 1,
    workers: int = 1,
    filters: QualityFilters = QualityFilters(),
) -> dict:
    """Filter and cache this shard's scans (those not done yet); returns counts, the datalist path and the rows
    of the scans that failed in this run (unreadable or not a usable CT, as opposed to filtered out)."""
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
    counts, reasons, failed = Counter(), Counter(), []
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
                if row["status"] == "failed":
                    failed.append(row)
        finally:
            if pool is not None:
                pool.close()
                pool.join()
    datalist = write_cache_datalist(output_dir)
    return {"counts": dict(counts), "dropped_by_reason": dict(reasons), "manifest": manifest, "datalist": datalist,
            "failed": failed}


def read_source_list(path: str | os.PathLike) -> list[str]:
    """Scans listed in a text file (one path a line), a CSV with a ``local_path`` or ``path`` column
    (e.g. ``ctfm idc-manifest``'s manifest), or a decathlon datalist (every list's ``image``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: list of scans not found")
    base = path.parent
    if path.suffix == ".json":
        from ctfm.validation import read_datalist

        data = read_datalist(path)
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
