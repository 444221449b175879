"""Organ centroid distance (OCD): how well semantic search finds an organ from one point (paper, Figure 6c).

The paper's definition (Methods, "Organ Centroid Distance"): take the centroid of a structure
(the heart by default, TotalSegmentator id 51) in a source scan as the query point; semantic
search (:mod:`ctfm.analysis.search`) finds the best-matching box in every other scan; the OCD is
the distance in cm between the centre of that box and the structure's centroid in the target. The
inside rate is the fraction of targets whose best-match centre falls inside the structure. Scans
without the structure are skipped (the paper compares only scans that contain it).

Two inside tests are reported side by side: ``inside`` (strict: the structure holds the match's voxel)
and ``inside_lenient``, the authors' test (``scripts/semantic_search_quantitative.py``:
``match_point in label_indices`` on tensors, which is true when any voxel of the structure shares one
coordinate with the match on the same axis, i.e. the match lies in the structure's span along at least
one axis); it is the one behind the paper's inside figure.

``protocol="paper"`` is the authors' setting of that script (:data:`PAPER_PROTOCOL`): a 1 mm isotropic
grid, a 64^3 box, windows at overlap 0.625 (stride 24), each window cropped and embedded on its own
(``method="windows"``). The default is the project's faster search (3 x 1 x 1 mm, 16 x 64 x 64 box,
one encoder pass per scan).

Input: a decathlon-style datalist whose entries have "image" and a "label" map. Each target's row
is appended to ``ocd.csv`` as soon as it is done, so a killed run resumes where it stopped;
``summary.json`` holds the mean +- sd, a bootstrap 95% interval, and the inside rate.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ctfm.analysis.search import DEFAULT_BOX, DEFAULT_STRIDE

SETTINGS_FILE = "ocd_settings.json"  # weights sha256 and every setting: one folder never mixes two
FIELDS = ["target", "ocd_cm", "inside", "similarity", "match_x_mm", "match_y_mm", "match_z_mm",
          "centroid_x_mm", "centroid_y_mm", "centroid_z_mm", "inside_lenient"]
PROTOCOLS = ("project", "paper")
# The authors' OCD script: Spacing [1, 1, 1], patch (64, 64, 64), SlidingWindowSplitter overlap 0.625.
PAPER_PROTOCOL = {"spacing": (1.0, 1.0, 1.0), "box": (64, 64, 64), "stride": (24, 24, 24), "method": "windows"}


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
    from ctfm.analysis.scans import voxel_to_world

    voxels = np.argwhere(np.asarray(label[0]) == structure)
    return voxel_to_world(label.affine, voxels.mean(axis=0)) if len(voxels) else None


def inside_lenient(label: np.ndarray, voxel, structure: int) -> bool:
    """The authors' inside test: some voxel of ``structure`` shares a coordinate with ``voxel`` on the same axis."""
    voxels = np.argwhere(label == structure)
    return bool((voxels == np.asarray(voxel)).any())


def organ_centroid_distance(datalist, weights, output_dir, dataset_dir=None, structure="heart", source_index=0,
                            box=DEFAULT_BOX, stride=DEFAULT_STRIDE, method="pooled", spacing=None, batch_size=8,
                            device="cpu", encoder=None, overwrite: bool = False, protocol="project") -> dict:
    """OCD (cm) and inside rates over a datalist (module docstring); resumes from ``ocd.csv``; returns the summary.

    ``protocol="paper"`` replaces ``box``, ``stride``, ``method`` and ``spacing`` with :data:`PAPER_PROTOCOL`.
    ``ocd_settings.json`` records the weights' sha256 and every setting; a rerun with others into the same
    folder is refused (its rows would be mixed with these). ``overwrite`` starts the folder over instead.
    """
    from tqdm import tqdm

    from ctfm.analysis.scans import Scan, datalist_entries, world_to_voxel
    from ctfm.analysis.search import query_embedding, search_image
    from ctfm.io import absolute, csv_text, refuse_other_settings, write_text_atomic
    from ctfm.metrics import bootstrap_ci
    from ctfm.registry import EMBEDDING_SPACING
    from ctfm.validation import check_files_exist, load_volume
    from ctfm.weights import load_pretrained, weights_sha256

    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r}: expected one of {PROTOCOLS}.")
    if protocol == "paper":
        box, stride, method, spacing = (PAPER_PROTOCOL[k] for k in ("box", "stride", "method", "spacing"))
    spacing = tuple(spacing or EMBEDDING_SPACING)
    sid_label = structure_id(structure)
    cases = [c for c in datalist_entries(datalist, dataset_dir) if isinstance(c.get("label"), str)]
    if len(cases) < 2:
        raise ValueError(f"{datalist}: OCD needs at least two entries with an 'image' and a 'label' map, found {len(cases)}.")
    if not 0 <= source_index < len(cases):
        raise ValueError(f"--source-index {source_index} is outside 0..{len(cases) - 1} ({datalist} has {len(cases)} entries).")
    check_files_exist(cases, where=str(datalist))
    out = Path(output_dir)
    table, settings_file = out / "ocd.csv", out / SETTINGS_FILE
    source = cases[source_index]
    settings = {"weights_sha256": weights_sha256(weights) if encoder is None else None,
                "datalist": str(absolute(datalist)), "source": str(source["image"]), "structure_id": sid_label,
                "box": list(box), "stride": list(stride),
                "method": method, "spacing": list(spacing)}
    if not overwrite:
        refuse_other_settings(settings_file, settings)
    done = {}
    if table.exists() and not overwrite:
        with open(table) as f:
            done = {row["target"]: row for row in csv.DictReader(f)}
    src_centroid = label_centroid_world(load_volume(source["label"]), sid_label)
    if src_centroid is None:
        raise ValueError(f"the source label map {source['label']} holds no voxel of structure {structure!r} "
                         f"(id {sid_label}); pick another --source-index.")
    model = encoder if encoder is not None else load_pretrained(weights)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(settings_file, json.dumps(settings, indent=2) + "\n")
    write_text_atomic(table, csv_text(FIELDS, done.values()))  # --overwrite: the earlier rows go now
    src = Scan.read(source["image"], spacing)
    query = query_embedding(model, src.image, src.world_to_grid(src_centroid), box, method, device=device)
    targets = [c for i, c in enumerate(cases) if i != source_index and str(c["image"]) not in done]
    rows = list(done.values())
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
        rows.append({"target": str(case["image"]), "ocd_cm": round(float(np.linalg.norm(world - centroid)) / 10, 4),
                     "inside": int(label[0][tuple(voxel)] == sid_label),
                     "inside_lenient": int(inside_lenient(np.asarray(label[0]), voxel, sid_label)),
                     "similarity": round(float(match.similarity[match.best]), 6),
                     **dict(zip(FIELDS[4:7], np.round(world, 2))), **dict(zip(FIELDS[7:], np.round(centroid, 2)))})
        write_text_atomic(table, csv_text(FIELDS, rows))  # after each target: a kill loses none, and no half row

    def rate(flags):  # rows of an older ocd.csv lack the lenient column: counted where present
        known = [int(v) for v in flags if v not in (None, "")]
        return float(np.mean(known)) if known else float("nan")

    ocd = np.array([float(r["ocd_cm"]) for r in rows])
    mean, low, high = bootstrap_ci(ocd)
    summary = {"structure": structure, "structure_id": sid_label, "source": str(source["image"]),
               "n_targets": len(rows), "ocd_cm_mean": mean, "ocd_cm_sd": float(ocd.std(ddof=1)) if len(ocd) > 1 else 0.0,
               "ocd_cm_ci95": [low, high], "inside_rate": rate([r["inside"] for r in rows]),
               "inside_rate_lenient": rate([r.get("inside_lenient") for r in rows]),
               "protocol": protocol, "method": method, "box": list(box), "stride": list(stride), "spacing": list(spacing)}
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    return summary
