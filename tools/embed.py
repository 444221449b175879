"""512-d CT-FM embeddings of CT volumes (whole volume, the model card's way), resumable.

Each scan is preprocessed the CT-FM way (SPL, 3 x 1 x 1 mm, foreground crop, HU scaling), passed
through the encoder at once, and its last stage averaged to 512 values. Results go to one
``<scan id>.npy`` per scan plus ``embeddings.csv`` (scan id, source path, file); scans already
embedded are skipped, so a killed run continues where it stopped.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

DESCRIPTION = __doc__
EXAMPLES = """  ctfm embed --weights ct_fm_feature_extractor/ --output-dir embeddings/ scan1.nii.gz scan2.nrrd dicom_series_dir/
  ctfm embed --weights ct_fm_feature_extractor/ --output-dir embeddings/ --datalist dataset.json --dataset-dir /data
"""


def add_arguments(parser) -> None:
    parser.add_argument("inputs", nargs="*", help="NIfTI/NRRD files or DICOM series folders")
    parser.add_argument("--weights", required=True, help="CT-FM weights in any supported form")
    parser.add_argument("--output-dir", required=True, help="folder for <scan id>.npy files and embeddings.csv")
    parser.add_argument("--datalist", default=None, help="decathlon-style JSON; every list's 'image' entries are used")
    parser.add_argument("--dataset-dir", default=None, help="base folder of the datalist's relative paths")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda:0")


def scan_id(path: str | os.PathLike) -> str:
    """A file-system-safe id from a path: the name without image suffixes."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def embed_files(paths, weights, output_dir, device: str = "cpu") -> Path:
    """Embed every path not embedded yet; returns the index CSV."""
    import numpy as np
    from tqdm import tqdm

    from ctfm.embeddings import embed_volume
    from ctfm.transforms import preprocess
    from ctfm.validation import check_files_exist
    from ctfm.weights import load_pretrained

    paths = [Path(p) for p in paths]
    check_files_exist([{"image": p} for p in paths], keys=("image",), where="the inputs")
    ids = [scan_id(p) for p in paths]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise ValueError(f"several inputs share the scan id(s) {sorted(dupes)}; rename them so no result overwrites another.")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    encoder = load_pretrained(weights)
    todo = [(i, p) for i, p in zip(ids, paths) if not (out / f"{i}.npy").exists()]
    for sid, path in tqdm(todo, desc="embedding", unit="scan"):
        vector = embed_volume(encoder, preprocess(path), device=device).numpy()
        tmp = out / f".{sid}.tmp.npy"
        np.save(tmp, vector)
        tmp.rename(out / f"{sid}.npy")  # atomic: a killed run never leaves a half file
    index = out / "embeddings.csv"
    with open(index, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["scan_id", "source", "embedding"])
        writer.writerows([sid, str(p), f"{sid}.npy"] for sid, p in zip(ids, paths))
    return index


def run(args) -> int:
    paths = list(args.inputs)
    if args.datalist:
        from monai.data import load_decathlon_datalist
        import json

        base = args.dataset_dir or str(Path(args.datalist).parent)
        for key in [k for k, v in json.loads(Path(args.datalist).read_text()).items() if isinstance(v, list)]:
            paths += [d["image"] for d in load_decathlon_datalist(args.datalist, data_list_key=key, base_dir=base)]
    if not paths:
        raise ValueError("no inputs: give files/folders or --datalist")
    index = embed_files(paths, weights=args.weights, output_dir=args.output_dir, device=args.device)
    print(f"embeddings of {len(paths)} scan(s): {index}")
    return 0
