"""512-d CT-FM embeddings of whole volumes, and of many scans into a resumable folder (``ctfm embed``).

Each scan is preprocessed the CT-FM way (SPL, 3 x 1 x 1 mm, foreground crop, HU scaling), passed
through the encoder at once, and its last stage averaged to 512 values (the model card's way). With
``aggregate`` (min, mean or max) the scan is instead cut by a sliding window (24 x 128 x 128 voxels,
overlap 0.625: the authors' 3D-MIR setting), each window is embedded, and the window embeddings are
reduced element-wise (min was the paper's best for 3D-MIR retrieval).

:func:`embed_files` writes one ``<scan id>.npy`` per scan plus ``embeddings.csv`` (scan id, source
path, file); scans already embedded are skipped, so a killed run continues where it stopped. Use a
new output folder per setting: the files of one folder are never mixed or overwritten.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ctfm.analysis.patch_embeddings import DEFAULT_OVERLAP, DEFAULT_WINDOW
from ctfm.networks import CTFMEmbedder, find_encoder

INDEX_FILE = "embeddings.csv"  # scan_id, source, embedding (the .npy file name)
SETTINGS_FILE = "embedding_settings.json"


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


def embed_files(paths=(), weights=None, output_dir=None, datalist=None, dataset_dir=None, device: str = "cpu",
                aggregate: str | None = None, window=DEFAULT_WINDOW, overlap: float = DEFAULT_OVERLAP) -> Path:
    """Embed every scan of ``paths`` and of ``datalist`` (all its lists) not embedded yet; returns the index CSV."""
    from tqdm import tqdm

    from ctfm.analysis.patch_embeddings import aggregate as reduce_patches
    from ctfm.analysis.patch_embeddings import stride_from_overlap, window_embeddings
    from ctfm.analysis.scans import datalist_entries
    from ctfm.io import atomic_path, csv_text, scan_id, write_text_atomic
    from ctfm.transforms import preprocess
    from ctfm.validation import check_files_exist
    from ctfm.weights import load_pretrained

    paths = [Path(p) for p in paths]
    if datalist:
        paths += [Path(d["image"]) for d in datalist_entries(datalist, dataset_dir)]
    if not paths:
        raise ValueError("no inputs: give files/folders or --datalist")
    check_files_exist([{"image": p} for p in paths], keys=("image",), where="the inputs")
    ids = [scan_id(p) for p in paths]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise ValueError(f"several inputs share the scan id(s) {sorted(dupes)}; rename them so no result overwrites another.")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    setting = {"aggregate": aggregate, **({"window": list(window), "overlap": overlap} if aggregate else {})}
    settings_file = out / SETTINGS_FILE
    if settings_file.exists() and json.loads(settings_file.read_text()) != setting:
        raise ValueError(f"{out} holds embeddings made with {settings_file.read_text().strip()}, not {setting}; "
                         "use a new --output-dir for another setting.")
    write_text_atomic(settings_file, json.dumps(setting))
    encoder = load_pretrained(weights)
    todo = [(i, p) for i, p in zip(ids, paths) if not (out / f"{i}.npy").exists()]
    for sid, path in tqdm(todo, desc="embedding", unit="scan"):
        image = preprocess(path)
        if aggregate:
            patches, _ = window_embeddings(encoder, image, window, stride_from_overlap(window, overlap), device=device)
            vector = reduce_patches(patches, aggregate)
        else:
            vector = embed_volume(encoder, image, device=device).numpy()
        with atomic_path(out / f"{sid}.npy") as tmp:  # a killed run never leaves a half file
            with open(tmp, "wb") as f:
                np.save(f, vector)
    return write_text_atomic(out / INDEX_FILE, csv_text(["scan_id", "source", "embedding"],
                                                        ([sid, str(p), f"{sid}.npy"] for sid, p in zip(ids, paths))))
