"""Semantic concept search: a box around a point in a source scan -> the best-matching box in each target scan.

The paper's method (Methods, "Semantic Concept Search"; Figure 6b, Extended Data Figure 9): embed
the query box, embed every window of a sliding window over the target, rank by cosine similarity;
the best window's centre is the match. Scans are preprocessed the CT-FM way (SPL, 3 x 1 x 1 mm,
HU scaling). Per target it writes the similarity heatmap as NIfTI on the target's own voxel grid
(each voxel: mean similarity of the windows holding it), a PNG with the CT underneath, and one row
of ``matches.csv`` (best match in voxels of the target file and in world RAS mm).

Two methods give the window embeddings (``--method``):
  pooled   (default, fast) the encoder runs once over each scan and windows are averaged from its
           last stage; the query box is pooled from the source's map the same way. Boxes are
           multiples of 16 voxels; a stride under 16 costs 16/stride passes along that axis.
  windows  the authors' way: every window crop is embedded on its own (one pass per window).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DESCRIPTION = __doc__
EXAMPLES = """  ctfm search --weights ct_fm_feature_extractor/ --source chest1.nii.gz --point 120 250 80 --output-dir search/ chest2.nii.gz chest3.nrrd
  ctfm search --weights ct_fm_feature_extractor/ --source a.nii.gz --point -10.5 20 -300 --point-space mm --box 16 64 64 --stride 8 16 16 --method windows --output-dir search_exact/ b.nii.gz
"""

DEFAULT_BOX = (16, 64, 64)  # voxels of the CT-FM grid (S, P, L): 48 x 64 x 64 mm at 3 x 1 x 1 mm (the app's query)
DEFAULT_STRIDE = (8, 16, 16)


def add_arguments(parser) -> None:
    parser.add_argument("targets", nargs="+", help="target scans (NIfTI/NRRD files or DICOM folders)")
    parser.add_argument("--source", required=True, help="the scan holding the query point")
    parser.add_argument("--point", required=True, nargs=3, type=float, metavar=("I", "J", "K"),
                        help="query point in the source: voxel indices of the file (default) or world mm")
    parser.add_argument("--point-space", choices=("voxel", "mm"), default="voxel",
                        help="voxel: 0-based array indices as stored in the file; mm: world RAS coordinates (3D Slicer)")
    add_window_arguments(parser, box=DEFAULT_BOX, stride=DEFAULT_STRIDE)
    parser.add_argument("--output-dir", required=True, help="new folder for heatmaps, PNGs and matches.csv")


def add_window_arguments(parser, box, stride, box_help="query box / window size in voxels of the CT-FM grid (S P L)") -> None:
    """The options every patch tool shares: weights, grid, window, stride, method, device."""
    from ctfm.patch_embeddings import METHODS
    from ctfm.registry import EMBEDDING_SPACING

    parser.add_argument("--weights", required=True, help="CT-FM weights in any supported form")
    parser.add_argument("--box", nargs=3, type=int, default=list(box), metavar=("S", "P", "L"), help=box_help)
    parser.add_argument("--stride", nargs=3, type=int, default=list(stride), metavar=("S", "P", "L"),
                        help="window step in voxels")
    parser.add_argument("--method", choices=METHODS, default="pooled",
                        help="pooled: one encoder pass per scan (fast); windows: one pass per window (the paper's)")
    parser.add_argument("--spacing", nargs=3, type=float, default=list(EMBEDDING_SPACING), metavar=("S", "P", "L"),
                        help="voxel size in mm of the CT-FM grid")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per encoder pass (method windows)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda:0")


def new_output_dir(path) -> Path:
    """Create ``path``; refuse one that holds files, so no earlier result is overwritten."""
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} already holds files; choose a new --output-dir so nothing is overwritten.")
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class Scan:
    """A scan as read (``raw``: its own grid) and preprocessed (``image``: the CT-FM grid, (1, S, P, L))."""

    path: Path
    raw: object
    image: object

    @classmethod
    def read(cls, path, spacing) -> "Scan":
        from ctfm.transforms import ct_fm_transforms
        from ctfm.validation import load_volume

        image = ct_fm_transforms(spacing=spacing)({"image": str(path)})["image"]
        return cls(Path(path), load_volume(path), image)

    def file_voxel_to_grid(self, voxel) -> np.ndarray:
        from ctfm.patch_embeddings import voxel_to_world, world_to_voxel

        return world_to_voxel(self.image.affine, voxel_to_world(self.raw.affine, voxel))

    def world_to_grid(self, world) -> np.ndarray:
        from ctfm.patch_embeddings import world_to_voxel

        return world_to_voxel(self.image.affine, world)

    def grid_to_world(self, voxel) -> np.ndarray:
        from ctfm.patch_embeddings import voxel_to_world

        return voxel_to_world(self.image.affine, voxel)


def box_start(centre, box, shape) -> np.ndarray:
    """Start voxel of a box centred on ``centre``, kept inside a volume of ``shape`` where the volume allows."""
    start = np.round(np.asarray(centre, dtype=float) - (np.asarray(box) - 1) / 2.0).astype(int)
    return np.clip(start, 0, np.maximum(np.asarray(shape) - np.asarray(box), 0))


def query_embedding(model, image, centre, box, method: str, device: str = "cpu") -> np.ndarray:
    """The 512-d embedding of the box around ``centre`` (grid voxels), made the way ``method`` makes windows."""
    import torch
    import torch.nn.functional as F

    from ctfm.networks import CTFMEmbedder, find_encoder
    from ctfm.patch_embeddings import STAGE_STRIDE, _plain, check_fast_grid, feature_map, pad_to

    image = _plain(image)
    start = box_start(centre, box, image.shape[1:])
    if method == "windows":
        crop = pad_to(image[:, start[0]:, start[1]:, start[2]:], box)[:, : box[0], : box[1], : box[2]]
        with torch.no_grad():
            return CTFMEmbedder(find_encoder(model)).to(device).eval()(crop[None].to(device))[0].cpu().numpy()
    check_fast_grid(box, [STAGE_STRIDE] * 3)
    offset = start % STAGE_STRIDE  # one pass, shifted so the box starts on a cell boundary
    fmap = feature_map(model, image[:, offset[0]:, offset[1]:, offset[2]:], device=device)
    cell = (start - offset) // STAGE_STRIDE
    cells = [b // STAGE_STRIDE for b in box]
    fmap = F.pad(fmap, [0, max(0, cell[2] + cells[2] - fmap.shape[3]), 0, max(0, cell[1] + cells[1] - fmap.shape[2]),
                        0, max(0, cell[0] + cells[0] - fmap.shape[1])])
    return fmap[:, cell[0]: cell[0] + cells[0], cell[1]: cell[1] + cells[1], cell[2]: cell[2] + cells[2]].mean((1, 2, 3)).numpy()


@dataclass
class Match:
    """Similarity of every target window to the query, and the best one (grid voxels of the target)."""

    similarity: np.ndarray  # (N,)
    starts: np.ndarray  # (N, 3)
    window: tuple

    @property
    def best(self) -> int:
        return int(np.argmax(self.similarity))

    @property
    def best_centre(self) -> np.ndarray:
        from ctfm.patch_embeddings import window_centres

        return window_centres(self.starts[self.best], self.window)


def search_image(model, query: np.ndarray, target, box, stride, method: str, device="cpu", batch_size=8, progress=True) -> Match:
    """Cosine similarity of ``query`` to every window of the preprocessed ``target``."""
    from ctfm.patch_embeddings import cosine_similarity, patch_embeddings

    emb, starts = patch_embeddings(model, target, box, stride, method=method, batch_size=batch_size, device=device,
                                   progress=progress)
    return Match(cosine_similarity(query, emb), starts, tuple(box))


def save_heatmap_png(image, heat, path, centre=None, spacing=(1, 1, 1), title="", label="", cmap="inferno",
                     vmin=None, vmax=None, alpha=0.5, window=(-400.0, 600.0), marker="best match") -> Path:
    """Three orthogonal slices through ``centre`` (SPL grid): the CT in grey, ``heat`` in colour with a colour bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ctfm.registry import HU_MAX, HU_MIN
    from ctfm.viz import orthogonal_slices

    ct = np.asarray(image, dtype=np.float32).reshape(np.shape(heat)) * (HU_MAX - HU_MIN) + HU_MIN
    heat = np.asarray(heat, dtype=np.float32)
    centre = [int(round(c)) for c in (centre if centre is not None else np.array(heat.shape) // 2)]
    centre = [min(max(c, 0), n - 1) for c, n in zip(centre, heat.shape)]
    vmin = float(np.nanmin(heat)) if vmin is None else vmin
    vmax = float(np.nanmax(heat)) if vmax is None else vmax
    aspects = {"axial": spacing[1] / spacing[2], "coronal": spacing[0] / spacing[2], "sagittal": spacing[0] / spacing[1]}
    marks = {"axial": (centre[2], centre[1]), "coronal": (centre[2], heat.shape[0] - 1 - centre[0]),
             "sagittal": (centre[1], heat.shape[0] - 1 - centre[0])}
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.6), constrained_layout=True)
    shown = None
    for ax, (view, ct_slice), heat_slice in zip(axes, orthogonal_slices(ct, centre).items(), orthogonal_slices(heat, centre).values()):
        ax.imshow(ct_slice, cmap="gray", vmin=window[0], vmax=window[1], aspect=aspects[view])
        shown = ax.imshow(heat_slice, cmap=cmap, vmin=vmin, vmax=vmax, alpha=alpha, aspect=aspects[view])
        ax.plot(*marks[view], marker="+", color="cyan", markersize=18, mew=2)
        ax.set_title(view)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax, (left, right) in zip(axes, (("R", "L"), ("R", "L"), ("A", "P"))):
        ax.set_xlabel(f"{left}  \u2190  \u2192  {right}")
    fig.colorbar(shown, ax=axes, shrink=0.8, label=label)
    fig.suptitle(f"{title}   (+: {marker}; CT window -400..600 HU)")
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def scan_id(path) -> str:
    from ctfm.cli.embed import scan_id as _scan_id

    return _scan_id(path)


def semantic_search(source, point, targets, weights, output_dir, point_space="voxel", box=DEFAULT_BOX,
                    stride=DEFAULT_STRIDE, method="pooled", spacing=None, batch_size=8, device="cpu", encoder=None) -> Path:
    """Search every target for the box around ``point`` in ``source``; returns the path of ``matches.csv``."""
    from tqdm import tqdm

    from ctfm.patch_embeddings import save_map, windows_to_voxels, world_to_voxel
    from ctfm.registry import EMBEDDING_SPACING
    from ctfm.validation import check_files_exist
    from ctfm.weights import load_pretrained

    spacing = tuple(spacing or EMBEDDING_SPACING)
    check_files_exist([{"image": p} for p in [source, *targets]], keys=("image",), where="the search inputs")
    out = new_output_dir(output_dir)
    model = encoder if encoder is not None else load_pretrained(weights)
    src = Scan.read(source, spacing)
    centre = src.world_to_grid(point) if point_space == "mm" else src.file_voxel_to_grid(point)
    shape = np.array(src.image.shape[1:])
    if np.any(centre < -0.5) or np.any(centre > shape - 0.5):
        raise ValueError(f"the point {list(point)} ({point_space}) lies outside {source} after preprocessing "
                         f"(grid voxel {np.round(centre, 1).tolist()}, grid shape {shape.tolist()}); check --point-space.")
    query = query_embedding(model, src.image, centre, box, method, device=device)
    rows = []
    for target in tqdm(targets, desc="searching targets", unit="scan", disable=len(targets) < 2):
        tgt = Scan.read(target, spacing)
        match = search_image(model, query, tgt.image, box, stride, method, device=device, batch_size=batch_size)
        heat = windows_to_voxels(match.similarity, match.starts, box, tgt.image.shape[1:])[0]
        sid = scan_id(target)
        save_map(heat, tgt.image, out / f"{sid}_similarity.nii.gz", like=tgt.raw)
        save_heatmap_png(tgt.image[0].numpy(), heat, out / f"{sid}_similarity.png", centre=match.best_centre,
                         spacing=spacing, label="cosine similarity to the query box",
                         title=f"{sid}: best match for the query from {scan_id(source)}")
        world = tgt.grid_to_world(match.best_centre)
        rows.append({"target": str(target), "similarity": round(float(match.similarity[match.best]), 6),
                     **dict(zip(("voxel_i", "voxel_j", "voxel_k"), np.round(world_to_voxel(tgt.raw.affine, world), 2))),
                     **dict(zip(("world_x_mm", "world_y_mm", "world_z_mm"), np.round(world, 2)))})
    index = out / "matches.csv"
    with open(index, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "query.json").write_text(json.dumps({
        "source": str(source), "point": list(point), "point_space": point_space,
        "query_centre_world_mm": np.round(src.grid_to_world(centre), 2).tolist(), "box": list(box),
        "stride": list(stride), "method": method, "spacing": list(spacing), "weights": str(weights)}, indent=2))
    return index


def run(args) -> int:
    index = semantic_search(source=args.source, point=args.point, targets=args.targets, weights=args.weights,
                            output_dir=args.output_dir, point_space=args.point_space, box=args.box, stride=args.stride,
                            method=args.method, spacing=args.spacing, batch_size=args.batch_size, device=args.device)
    print(f"best matches: {index}")
    with open(index) as f:
        for row in csv.DictReader(f):
            print(f"  {row['target']}: voxel ({row['voxel_i']}, {row['voxel_j']}, {row['voxel_k']}), "
                  f"similarity {row['similarity']}")
    return 0


def structure_id(structure: str | int) -> int:
    """TotalSegmentator v2 id of a structure given by name or id, with the valid names on a typo."""
    from difflib import get_close_matches

    from ctfm.registry import totalsegmentator_classes, totalsegmentator_ids

    if str(structure).isdigit() and int(structure) in totalsegmentator_classes():
        return int(structure)
    ids = totalsegmentator_ids()
    if structure not in ids:
        near = get_close_matches(str(structure), ids, n=3)
        raise ValueError(f"unknown structure {structure!r}: give a TotalSegmentator v2 name or id 1..117"
                         + (f"; did you mean {', '.join(near)}?" if near else " (`ctfm info --list-classes` lists them)."))
    return ids[structure]


def label_centroid_world(label, structure: int) -> np.ndarray | None:
    """World (RAS mm) centroid of ``label == structure`` in a label MetaTensor, or None when absent."""
    from ctfm.patch_embeddings import voxel_to_world

    voxels = np.argwhere(np.asarray(label[0]) == structure)
    return voxel_to_world(label.affine, voxels.mean(axis=0)) if len(voxels) else None


def organ_centroid_distance(datalist, weights, output_dir, dataset_dir=None, structure="heart", source_index=0,
                            box=DEFAULT_BOX, stride=DEFAULT_STRIDE, method="pooled", spacing=None, batch_size=8,
                            device="cpu", encoder=None) -> dict:
    """OCD (cm) and inside rate over a datalist (see ``ctfm ocd --help``); resumes from ``ocd.csv``."""
    from monai.data import load_decathlon_datalist
    from tqdm import tqdm

    from ctfm.metrics import bootstrap_ci
    from ctfm.patch_embeddings import world_to_voxel
    from ctfm.registry import EMBEDDING_SPACING
    from ctfm.validation import check_files_exist, load_volume
    from ctfm.weights import load_pretrained

    spacing = tuple(spacing or EMBEDDING_SPACING)
    sid_label = structure_id(structure)
    base = dataset_dir or str(Path(datalist).parent)
    lists = [k for k, v in json.loads(Path(datalist).read_text()).items() if isinstance(v, list) and k != "labels"]
    cases = [d for k in lists for d in load_decathlon_datalist(datalist, data_list_key=k, base_dir=base)]
    cases = [c for c in cases if isinstance(c.get("label"), str)]
    if len(cases) < 2:
        raise ValueError(f"{datalist}: OCD needs at least two entries with an 'image' and a 'label' map, found {len(cases)}.")
    if not 0 <= source_index < len(cases):
        raise ValueError(f"--source-index {source_index} is outside 0..{len(cases) - 1} ({datalist} has {len(cases)} entries).")
    check_files_exist(cases, where=str(datalist))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "ocd.csv"
    fields = ["target", "ocd_cm", "inside", "similarity", "match_x_mm", "match_y_mm", "match_z_mm",
              "centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]
    done = {}
    if table.exists():
        with open(table) as f:
            done = {row["target"]: row for row in csv.DictReader(f)}
    source = cases[source_index]
    src_centroid = label_centroid_world(load_volume(source["label"]), sid_label)
    if src_centroid is None:
        raise ValueError(f"the source label map {source['label']} holds no voxel of structure {structure!r} "
                         f"(id {sid_label}); pick another --source-index.")
    model = encoder if encoder is not None else load_pretrained(weights)
    src = Scan.read(source["image"], spacing)
    query = query_embedding(model, src.image, src.world_to_grid(src_centroid), box, method, device=device)
    targets = [c for i, c in enumerate(cases) if i != source_index and str(c["image"]) not in done]
    with open(table, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if not done:
            writer.writeheader()
        for case in tqdm(targets, desc="OCD targets", unit="scan"):
            label = load_volume(case["label"])
            centroid = label_centroid_world(label, sid_label)
            if centroid is None:
                continue  # the structure is not in this scan's field of view
            tgt = Scan.read(case["image"], spacing)
            match = search_image(model, query, tgt.image, box, stride, method, device=device, batch_size=batch_size,
                                 progress=False)
            world = tgt.grid_to_world(match.best_centre)
            voxel = np.clip(np.round(world_to_voxel(label.affine, world)).astype(int), 0, np.array(label.shape[1:]) - 1)
            writer.writerow({"target": str(case["image"]), "ocd_cm": round(float(np.linalg.norm(world - centroid)) / 10, 4),
                             "inside": int(label[0][tuple(voxel)] == sid_label),
                             "similarity": round(float(match.similarity[match.best]), 6),
                             **dict(zip(fields[4:7], np.round(world, 2))), **dict(zip(fields[7:], np.round(centroid, 2)))})
            f.flush()  # each finished target survives a kill
    with open(table) as f:
        rows = list(csv.DictReader(f))
    ocd = np.array([float(r["ocd_cm"]) for r in rows])
    mean, low, high = bootstrap_ci(ocd)
    summary = {"structure": structure, "structure_id": sid_label, "source": str(source["image"]),
               "n_targets": len(rows), "ocd_cm_mean": mean, "ocd_cm_sd": float(ocd.std(ddof=1)) if len(ocd) > 1 else 0.0,
               "ocd_cm_ci95": [low, high], "inside_rate": float(np.mean([int(r["inside"]) for r in rows])) if rows else float("nan"),
               "method": method, "box": list(box), "stride": list(stride), "spacing": list(spacing)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
