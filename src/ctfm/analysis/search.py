"""Semantic concept search: a box around a point in a source scan -> the best-matching box in each target scan.

The paper's method (Methods, "Semantic Concept Search"; Figure 6b, Extended Data Figure 9): embed
the query box, embed every window of a sliding window over the target, rank by cosine similarity;
the best window's centre is the match. Scans are preprocessed the CT-FM way (SPL, 3 x 1 x 1 mm,
HU scaling). Per target it writes the similarity heatmap as NIfTI on the target's own voxel grid
(each voxel: mean similarity of the windows holding it), a PNG with the CT underneath, and one row
of ``matches.csv`` (best match in voxels of the target file and in world RAS mm).

Two methods give the window embeddings (``method``):
  pooled   (default, fast) the encoder runs once over each scan and windows are averaged from its
           last stage; the query box is pooled from the source's map the same way. Boxes are
           multiples of 16 voxels; a stride under 16 costs 16/stride passes along that axis.
  windows  the authors' way: every window crop is embedded on its own (one pass per window).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctfm.analysis.scans import Scan

DEFAULT_BOX = (16, 64, 64)  # voxels of the CT-FM grid (S, P, L): 48 x 64 x 64 mm at 3 x 1 x 1 mm (the app's query)
DEFAULT_STRIDE = (8, 16, 16)
MATCH_FILE = "matches.csv"


def box_start(centre, box, shape) -> np.ndarray:
    """Start voxel of a box centred on ``centre``, kept inside a volume of ``shape`` where the volume allows."""
    start = np.round(np.asarray(centre, dtype=float) - (np.asarray(box) - 1) / 2.0).astype(int)
    return np.clip(start, 0, np.maximum(np.asarray(shape) - np.asarray(box), 0))


def query_embedding(model, image, centre, box, method: str, device: str = "cpu", precision: str = "fp32",
                    maps: dict | None = None) -> np.ndarray:
    """The 512-d embedding of the box around ``centre`` (grid voxels), made the way ``method`` makes windows
    (pooled: in ``precision``, its pass kept in ``maps`` when given)."""
    import torch
    import torch.nn.functional as F

    from ctfm.analysis.patch_embeddings import STAGE_STRIDE, check_fast_grid, pad_to, shifted_feature_map
    from ctfm.analysis.scans import as_volume
    from ctfm.networks import CTFMEmbedder, find_encoder

    image = as_volume(image)
    start = box_start(centre, box, image.shape[1:])
    if method == "windows":
        crop = pad_to(image[:, start[0]:, start[1]:, start[2]:], box)[:, : box[0], : box[1], : box[2]]
        with torch.no_grad():
            return CTFMEmbedder(find_encoder(model)).to(device).eval()(crop[None].to(device))[0].cpu().numpy()
    check_fast_grid(box, [STAGE_STRIDE] * 3)
    offset = start % STAGE_STRIDE  # one pass, shifted so the box starts on a cell boundary
    fmap = shifted_feature_map(model, image, offset, device=device, precision=precision, maps=maps)
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
        from ctfm.analysis.patch_embeddings import window_centres

        return window_centres(self.starts[self.best], self.window)


def search_image(model, query: np.ndarray, target, box, stride, method: str, device="cpu", batch_size=8, progress=True,
                 **pooled_options) -> Match:
    """Cosine similarity of ``query`` to every window of the preprocessed ``target`` (``pooled_options``: ``precision``,
    ``maps`` of :func:`ctfm.analysis.patch_embeddings.pooled_window_embeddings`)."""
    from ctfm.analysis.patch_embeddings import cosine_similarity, patch_embeddings

    emb, starts = patch_embeddings(model, target, box, stride, method=method, batch_size=batch_size, device=device,
                                   progress=progress, **pooled_options)
    return Match(cosine_similarity(query, emb), starts, tuple(box))


def semantic_search(source, point, targets, weights, output_dir, point_space="voxel", box=DEFAULT_BOX,
                    stride=DEFAULT_STRIDE, method="pooled", spacing=None, batch_size=8, device="cpu", encoder=None,
                    precision="fp32") -> Path:
    """Search every target for the box around ``point`` in ``source``; returns the path of ``matches.csv``.

    ``point`` is in voxels of the source file (``point_space="voxel"``, 0-based) or world RAS mm
    (``"mm"``). ``encoder`` (a loaded model) spares reading ``weights`` again. ``precision`` "bf16" runs the
    pooled method's encoder in bfloat16 autocast (faster on CPUs that have it; same best matches in the tests).
    """
    from tqdm import tqdm

    from ctfm.analysis.patch_embeddings import windows_to_voxels
    from ctfm.analysis.scans import save_map, world_to_voxel
    from ctfm.io import csv_text, new_output_dir, scan_id, write_text_atomic
    from ctfm.registry import EMBEDDING_SPACING
    from ctfm.validation import check_files_exist
    from ctfm.viz import save_heatmap_png
    from ctfm.weights import load_pretrained

    spacing = tuple(spacing or EMBEDDING_SPACING)
    if precision != "fp32" and method != "pooled":
        raise ValueError(f"precision {precision!r} is for the pooled method; the per-window method runs in fp32.")
    check_files_exist([{"image": p} for p in [source, *targets]], keys=("image",), where="the search inputs")
    out = new_output_dir(output_dir)
    model = encoder if encoder is not None else load_pretrained(weights)
    src = Scan.read(source, spacing)
    centre = src.world_to_grid(point) if point_space == "mm" else src.file_voxel_to_grid(point)
    shape = np.array(src.image.shape[1:])
    if np.any(centre < -0.5) or np.any(centre > shape - 0.5):
        raise ValueError(f"the point {list(point)} ({point_space}) lies outside {source} after preprocessing "
                         f"(grid voxel {np.round(centre, 1).tolist()}, grid shape {shape.tolist()}); check --point-space.")
    pooled = {"precision": precision} if method == "pooled" else {}
    query = query_embedding(model, src.image, centre, box, method, device=device, **pooled)
    rows = []
    for target in tqdm(targets, desc="searching targets", unit="scan", disable=len(targets) < 2):
        tgt = Scan.read(target, spacing)
        match = search_image(model, query, tgt.image, box, stride, method, device=device, batch_size=batch_size, **pooled)
        heat = windows_to_voxels(match.similarity, match.starts, box, tgt.image.shape[1:])[0]
        sid = scan_id(target)
        save_map(heat, tgt.image, out / f"{sid}_similarity.nii.gz", like=tgt.raw)
        save_heatmap_png(tgt.image, heat, out / f"{sid}_similarity.png", centre=match.best_centre,
                         spacing=spacing, label="cosine similarity to the query box",
                         title=f"{sid}: best match for the query from {scan_id(source)}")
        world = tgt.grid_to_world(match.best_centre)
        rows.append({"target": str(target), "similarity": round(float(match.similarity[match.best]), 6),
                     **dict(zip(("voxel_i", "voxel_j", "voxel_k"), np.round(world_to_voxel(tgt.raw.affine, world), 2))),
                     **dict(zip(("world_x_mm", "world_y_mm", "world_z_mm"), np.round(world, 2)))})
    index = write_text_atomic(out / MATCH_FILE, csv_text(list(rows[0]), rows))
    write_text_atomic(out / "query.json", json.dumps({
        "source": str(source), "point": list(point), "point_space": point_space,
        "query_centre_world_mm": np.round(src.grid_to_world(centre), 2).tolist(), "box": list(box),
        "stride": list(stride), "method": method, **pooled, "spacing": list(spacing), "weights": str(weights)}, indent=2))
    return index
