"""512-d CT-FM embeddings of CT volumes (whole volume, the model card's way), resumable.

Each scan is preprocessed the CT-FM way (SPL, 3 x 1 x 1 mm, foreground crop, HU scaling), passed
through the encoder at once, and its last stage averaged to 512 values. Results go to one
``<scan id>.npy`` per scan plus ``embeddings.csv`` (scan id, source path, file); scans already
embedded are skipped, so a killed run continues where it stopped.

With ``--aggregate min|mean|max`` the scan is instead cut by a sliding window (24 x 128 x 128
voxels, overlap 0.625 by default: the authors' 3D-MIR setting), each window is embedded, and the
window embeddings are reduced element-wise (min was the paper's best for 3D-MIR retrieval).
Use a new --output-dir per setting: the files of one folder are never mixed or overwritten.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

DESCRIPTION = __doc__
EXAMPLES = """  ctfm embed --weights ct_fm_feature_extractor/ --output-dir embeddings/ scan1.nii.gz scan2.nrrd dicom_series_dir/
  ctfm embed --weights ct_fm_feature_extractor/ --output-dir embeddings/ --datalist dataset.json --dataset-dir /data
  ctfm embed --weights ct_fm_feature_extractor/ --aggregate min --output-dir embeddings_patch_min/ --datalist 3d_mir.json
"""


def add_arguments(parser) -> None:
    parser.add_argument("inputs", nargs="*", help="NIfTI/NRRD files or DICOM series folders")
    parser.add_argument("--weights", required=True, help="CT-FM weights in any supported form")
    parser.add_argument("--output-dir", required=True, help="folder for <scan id>.npy files and embeddings.csv")
    parser.add_argument("--datalist", default=None, help="decathlon-style JSON; every list's 'image' entries are used")
    parser.add_argument("--dataset-dir", default=None, help="base folder of the datalist's relative paths")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda:0")
    parser.add_argument("--aggregate", choices=("min", "mean", "max"), default=None,
                        help="patch-wise embeddings reduced this way (default: whole volume at once)")
    parser.add_argument("--window", nargs=3, type=int, default=[24, 128, 128], metavar=("S", "P", "L"),
                        help="patch size in voxels with --aggregate")
    parser.add_argument("--overlap", type=float, default=0.625, help="patch overlap 0..<1 with --aggregate")


def scan_id(path: str | os.PathLike) -> str:
    """A file-system-safe id from a path: the name without image suffixes."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def embed_files(paths, weights, output_dir, device: str = "cpu", aggregate: str | None = None,
                window=(24, 128, 128), overlap: float = 0.625) -> Path:
    """Embed every path not embedded yet (whole volume, or patches reduced by ``aggregate``); returns the index CSV."""
    import numpy as np
    from tqdm import tqdm

    from ctfm.embeddings import embed_volume
    from ctfm.patch_embeddings import aggregate as reduce_patches
    from ctfm.patch_embeddings import stride_from_overlap, window_embeddings
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
    setting = {"aggregate": aggregate, **({"window": list(window), "overlap": overlap} if aggregate else {})}
    settings_file = out / "embedding_settings.json"
    if settings_file.exists() and json.loads(settings_file.read_text()) != setting:
        raise ValueError(f"{out} holds embeddings made with {settings_file.read_text().strip()}, not {setting}; "
                         "use a new --output-dir for another setting.")
    settings_file.write_text(json.dumps(setting))
    encoder = load_pretrained(weights)
    todo = [(i, p) for i, p in zip(ids, paths) if not (out / f"{i}.npy").exists()]
    for sid, path in tqdm(todo, desc="embedding", unit="scan"):
        image = preprocess(path)
        if aggregate:
            patches, _ = window_embeddings(encoder, image, window, stride_from_overlap(window, overlap), device=device)
            vector = reduce_patches(patches, aggregate)
        else:
            vector = embed_volume(encoder, image, device=device).numpy()
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

        base = args.dataset_dir or str(Path(args.datalist).parent)
        for key in [k for k, v in json.loads(Path(args.datalist).read_text()).items() if isinstance(v, list)]:
            paths += [d["image"] for d in load_decathlon_datalist(args.datalist, data_list_key=key, base_dir=base)]
    if not paths:
        raise ValueError("no inputs: give files/folders or --datalist")
    index = embed_files(paths, weights=args.weights, output_dir=args.output_dir, device=args.device,
                        aggregate=args.aggregate, window=args.window, overlap=args.overlap)
    print(f"embeddings of {len(paths)} scan(s): {index}")
    return 0
