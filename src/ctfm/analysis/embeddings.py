"""512-d CT-FM embeddings of whole volumes, and of many scans into a resumable folder (``ctfm embed``).

Each scan is preprocessed the CT-FM way (SPL, 3 x 1 x 1 mm, foreground crop, HU scaling), passed
through the encoder at once, and its last stage averaged to 512 values (the model card's way). With
``aggregate`` (min, mean or max) the scan is instead cut by a sliding window (24 x 128 x 128 voxels,
overlap 0.625: the authors' 3D-MIR setting), each window is embedded, and the window embeddings are
reduced element-wise (min was the paper's best for 3D-MIR retrieval).

:func:`embed_files` writes one ``<scan id>.npy`` per scan plus ``embeddings.csv`` (scan id, source
path and signature, file) and ``embedding_settings.json`` (the weights' sha256 and every setting);
scans already embedded are skipped, so a killed run continues where it stopped. A folder holds one
set of weights and settings: another is refused, and so is a new file under an old scan's name
(``overwrite`` recomputes). A scan that cannot be read is listed in ``failures.csv`` and the rest go on.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ctfm.analysis.patch_embeddings import DEFAULT_OVERLAP, DEFAULT_WINDOW
from ctfm.networks import CTFMEmbedder, find_encoder
from ctfm.registry import EMBEDDING_SPACING, HU_MAX, HU_MIN, ORIENTATION

INDEX_FILE = "embeddings.csv"  # scan_id, source, embedding (the .npy file name), bytes, mtime_ns of the source
SETTINGS_FILE = "embedding_settings.json"  # weights sha256 and every setting: a folder never mixes two
FAILURES_FILE = "failures.csv"  # scan_id, source, error of the scans the last run could not embed


@torch.no_grad()
def embed_volume(model: nn.Module, image: torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    """Embedding of one preprocessed volume ``(1, S, P, L)`` (or a batch ``(B, 1, S, P, L)``) -> ``(512,)`` or ``(B, 512)``.

    ``model`` is a :class:`~ctfm.networks.CTFMEmbedder` or anything holding one CT-FM encoder; it is
    run in ``eval()`` mode so BatchNorm uses its stored statistics. The whole volume goes through
    the encoder at once; the last stage is averaged over space, as in the released model card.
    """
    embedder = model if isinstance(model, CTFMEmbedder) else CTFMEmbedder(find_encoder(model))
    embedder = embedder.to(device).eval()
    image = image.as_tensor() if hasattr(image, "as_tensor") else image  # drop MONAI metadata
    single = image.ndim == 4
    batch = (image[None] if single else image).to(device=device, dtype=torch.float32)
    out = embedder(batch).cpu()
    return out[0] if single else out


@dataclass
class EmbeddingRun:
    """What :func:`embed_files` did: the index it wrote, the scans embedded now and before, and the failures."""

    index: Path
    embedded: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # scan id -> why


def embedding_settings(weights, aggregate: str | None, window, overlap: float) -> dict:
    """Everything that changes the numbers of an embedding: the weights (their sha256) and every setting."""
    from ctfm.weights import weights_sha256

    return {
        "weights_sha256": weights_sha256(weights),
        "orientation": ORIENTATION, "spacing": list(EMBEDDING_SPACING), "hu_range": [HU_MIN, HU_MAX],
        "precision": "fp32", "method": "whole volume" if aggregate is None else "windows",
        "aggregate": aggregate, "window": list(window) if aggregate else None,
        "overlap": float(overlap) if aggregate else None,
    }


def _read_index(index: Path) -> dict[str, dict]:
    if not index.exists():
        return {}
    with open(index, newline="") as f:
        return {row["scan_id"]: row for row in csv.DictReader(f)}


def embed_files(paths=(), weights=None, output_dir=None, datalist=None, dataset_dir=None, device: str = "cpu",
                aggregate: str | None = None, window=DEFAULT_WINDOW, overlap: float = DEFAULT_OVERLAP,
                overwrite: bool = False) -> EmbeddingRun:
    """Embed every scan of ``paths`` and of ``datalist`` (all its lists) not embedded yet into ``output_dir``.

    Before any work: inputs that would share a result name are refused, and so is a folder made with
    other weights (sha256) or settings. Each scan's source (path, bytes, modification time) is recorded
    in the index; a scan whose ``.npy`` is there but came from another file (a new file with an old
    name) is refused unless ``overwrite``, which recomputes every scan given. A scan that fails is
    recorded (``failures.csv``, with the reason) and the others go on.
    """
    from tqdm import tqdm

    from ctfm.analysis.patch_embeddings import aggregate as reduce_patches
    from ctfm.analysis.patch_embeddings import stride_from_overlap, window_embeddings
    from ctfm.analysis.scans import datalist_entries
    from ctfm.io import (as_bool, atomic_path, csv_text, input_ids, refuse_other_settings, root_cause,
                         source_signature, write_text_atomic)
    from ctfm.transforms import preprocess
    from ctfm.validation import check_files_exist
    from ctfm.weights import load_pretrained

    paths = [Path(p) for p in paths]
    if datalist:
        paths += [Path(d["image"]) for d in datalist_entries(datalist, dataset_dir)]
    if not paths:
        raise ValueError("no inputs: give files/folders or --datalist")
    check_files_exist([{"image": p} for p in paths], keys=("image",), where="the inputs")
    ids = input_ids(paths)
    out = Path(output_dir)
    settings = embedding_settings(weights, aggregate, window, overlap)
    refuse_other_settings(out / SETTINGS_FILE, settings)
    index_file = out / INDEX_FILE
    rows = _read_index(index_file)
    signatures = {sid: source_signature(p) for sid, p in ids.items()}
    done = {sid for sid in ids if (out / f"{sid}.npy").exists()}
    stale = [sid for sid in sorted(done) if {k: str(v) for k, v in signatures[sid].items()}
             != {k: rows.get(sid, {}).get(k) for k in signatures[sid]}]
    if stale and not as_bool(overwrite):
        old = rows.get(stale[0], {})
        was = f"{old['source']} ({old['bytes']} bytes, mtime_ns {old['mtime_ns']})" if old else "an unrecorded source"
        raise FileExistsError(
            f"{out / (stale[0] + '.npy')} is the embedding of {was}, not of {ids[stale[0]]} "
            f"({signatures[stale[0]]['bytes']} bytes, mtime_ns {signatures[stale[0]]['mtime_ns']})"
            + (f", and {len(stale) - 1} more like it" if len(stale) > 1 else "")
            + "; nothing was written. Pass --overwrite to recompute them, or use a new --output-dir.")
    encoder = load_pretrained(weights)  # weights that cannot be used stop the run before anything is written
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / SETTINGS_FILE, json.dumps(settings, indent=2) + "\n")
    run = EmbeddingRun(index_file)
    todo = list(ids) if as_bool(overwrite) else [sid for sid in ids if sid not in done]
    run.kept = [sid for sid in ids if sid not in todo]
    columns = ["scan_id", "source", "embedding", "bytes", "mtime_ns"]
    for n, sid in enumerate(tqdm(todo, desc="embedding", unit="scan"), 1):
        try:
            image = preprocess(ids[sid])
            if aggregate:
                patches, _ = window_embeddings(encoder, image, window, stride_from_overlap(window, overlap),
                                               device=device)
                vector = reduce_patches(patches, aggregate)
            else:
                vector = embed_volume(encoder, image, device=device).numpy()
        except Exception as err:  # one bad scan must not cost the others: recorded, reported, exit status 1
            why = str(root_cause(err)) or type(root_cause(err)).__name__
            run.failures[sid] = why if str(ids[sid]) in why else f"{ids[sid]}: {why}"  # the file is always named
            tqdm.write(f"scan {n} of {len(todo)} failed: {run.failures[sid]}", file=sys.stderr)
            if sid in stale:  # --overwrite: the old file's embedding must not stay under the new file's name
                (out / f"{sid}.npy").unlink()
                rows.pop(sid, None)
            continue
        with atomic_path(out / f"{sid}.npy") as tmp:  # a killed run never leaves a half file
            with open(tmp, "wb") as f:
                np.save(f, vector)
        rows[sid] = {**signatures[sid], "scan_id": sid, "embedding": f"{sid}.npy"}
        run.embedded.append(sid)
        write_text_atomic(index_file, csv_text(columns, rows.values()))  # after each scan: a kill loses none
    write_text_atomic(index_file, csv_text(columns, rows.values()))
    failures_file = out / FAILURES_FILE
    if run.failures:
        write_text_atomic(failures_file, csv_text(["scan_id", "source", "error"],
                                                  ([sid, ids[sid], why] for sid, why in run.failures.items())))
    else:
        failures_file.unlink(missing_ok=True)  # the last run's record: a rerun that embeds them all clears it
    return run
