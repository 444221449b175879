"""``ctfm segment``: whole-body segmentation of CT scans with the segmentation bundle's own components.

The network, the preprocessing, the sliding-window inferer (it streams the label map, or stitches every
class score for ``probabilities``: the bundle's ``stitch``) and the label-map postprocessing (the argmax of
the scores, then back through the preprocessing onto the input's grid) are read from the bundle's
``configs/inference.json`` through ``monai.bundle.ConfigParser``: the command and the bundle run the same
code with the same settings, and a bundle override (``overrides={"spacing": [3, 3, 3]}``) changes both
the same way. Only what is written differs: here, a chosen subset of structures, per-structure masks,
compact probabilities, statistics, a preview and DICOM SEG, each written under a temporary name and
renamed, after every input, name and weight has been checked.

Files per scan ``<id>`` (the input's name without its volume suffix) in ``output_dir``:

- ``<id>_seg.nii.gz``: the label map (uint8, class-map ids) on the input's grid; ``<id>_seg.json``: its names.
- ``<id>_structures/<name>.nii.gz``: one binary mask per chosen structure (``per_structure``).
- ``<id>_probabilities.nii.gz``: softmax probability of each chosen structure as uint8, ``p = value / 255``
  (the channel order is in the sidecar's ``probabilities`` entry) (``probabilities``).
- ``<id>_preview.png``: three orthogonal slices with the labels over the CT (``preview``).
- ``<id>_seg.dcm``: also the label map as a DICOM SEG object referencing the source series
  (``output_type="dicom_seg"``, DICOM input only; written with highdicom, see :mod:`ctfm.dicom_seg`).
- ``statistics.json``: per scan and structure, volume (ml), HU mean / sd / min / max and ``incomplete``
  (the mask touches the border of the scan, so the structure is likely cut) (``statistics``).
"""

from __future__ import annotations

import difflib
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor, NibabelWriter
from monai.transforms import Invertd, Orientation, SaveImaged

from ctfm.inference import WriteLabelNamesd, label_names_sidecar, window_slices
from ctfm.io import atomic_path, list_inputs, scan_id, write_text_atomic
from ctfm.registry import ORIENTATION, label_groups
from ctfm.validation import check_same_grid, load_volume

SEGMENTATION_BUNDLE = "ct_fm_segmentation"
OUTPUT_TYPES = ("nifti", "dicom_seg")
PROBABILITY_SCALE = 255  # probabilities are stored as uint8: p = value / 255


# ---------------------------------------------------------------------------------------------
# The bundle's components
# ---------------------------------------------------------------------------------------------
def segmentation_bundle(bundles_dir: str | os.PathLike | None = None) -> Path:
    """The segmentation bundle's folder, from ``bundles_dir`` or ``$CTFM_BUNDLES``, with a clear error if absent."""
    from ctfm.bundles import bundles_dir as find_bundles

    try:
        bundle = find_bundles(bundles_dir) / SEGMENTATION_BUNDLE
    except (RuntimeError, FileNotFoundError) as err:
        raise FileNotFoundError(
            f"ctfm segment runs the segmentation bundle's configs/inference.json, which the installed package does "
            f"not hold (the bundles live in the bundles/ folder of a CT-FM checkout): {err}"
        ) from None
    if not (bundle / "configs" / "inference.json").is_file():
        raise FileNotFoundError(f"{bundle}/configs/inference.json is missing: the bundles folder has no segmentation "
                                "bundle. Point --bundles-dir (or $CTFM_BUNDLES) at the bundles/ folder of a checkout.")
    return bundle


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: the first GPU when there is one, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def inference_parser(bundle: Path, device: torch.device, overrides: Mapping | None = None):
    """``ConfigParser`` of the bundle's inference.json (+ metadata), with ``device`` and ``overrides`` set."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser.update({"bundle_root": str(bundle), "device": device, **dict(overrides or {})})
    return parser


def map_postprocessing(postprocessing) -> list:
    """The steps of the bundle's postprocessing that compute the label map (argmax, inversion onto the input's
    grid); the writers are left out: ``segment`` writes its own outputs, atomically."""
    return [t for t in postprocessing.transforms if not isinstance(t, (SaveImaged, WriteLabelNamesd))]


class ReportWindowBatches:
    """The network, saying how many of the ``total`` window batches are done at every tenth of them: the
    sliding-window inferer calls it once per batch (a scan takes minutes on a CPU)."""

    def __init__(self, network, total: int, say):
        self.network, self.total, self.say, self.done = network, total, say, 0

    def __call__(self, windows, *args, **kwargs):
        out = self.network(windows, *args, **kwargs)
        self.done += 1
        if self.done == self.total or self.done * 10 // self.total > (self.done - 1) * 10 // self.total:
            self.say(f"    window batch {self.done}/{self.total}", flush=True)
        return out


def window_batches(image_shape: Sequence[int], inferer) -> int:
    """How many batches of windows the sliding-window ``inferer`` runs over an image of ``image_shape``."""
    windows = len(window_slices(image_shape, inferer.roi_size, inferer.overlap))
    return -(-windows // inferer.sw_batch_size)


# ---------------------------------------------------------------------------------------------
# Which structures
# ---------------------------------------------------------------------------------------------
def choose_structures(
    label_names: Mapping[int, str], structures: Sequence[str] | None = None, groups: Sequence[str] | None = None
) -> dict[int, str]:
    """id -> name of the structures to write: every one (neither given), or the named ones and those of the
    named label groups. An unknown name stops with the closest names of the class map."""
    by_name = {name: i for i, name in label_names.items() if i > 0}
    if not structures and not groups:
        return {i: label_names[i] for i in sorted(by_name.values())}
    chosen = set()
    for name in structures or []:
        if name not in by_name:
            close = difflib.get_close_matches(name, list(by_name), n=5, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else "`ctfm info` lists the class map."
            raise ValueError(f"--structures: unknown structure {name!r}; {hint}")
        chosen.add(by_name[name])
    all_groups = label_groups()
    for group in groups or []:
        if group not in all_groups:
            raise ValueError(f"--groups: unknown group {group!r}; the groups are {', '.join(all_groups)}.")
        chosen.update(by_name[name] for name in all_groups[group])
    return {i: label_names[i] for i in sorted(chosen)}


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------
def structure_statistics(image: torch.Tensor, label_map: torch.Tensor, names: Mapping[int, str]) -> dict:
    """name -> volume (ml), voxels, HU mean / sd / min / max, and ``incomplete`` (the mask touches a border face of
    the scan, so part of the structure is likely outside it), for each structure of ``names`` present in the map.

    ``image`` (HU) and ``label_map`` are channel-first volumes on the same grid.
    """
    from scipy import ndimage

    check_same_grid(image, label_map)
    hu = np.asarray(image[0], dtype=np.float64)
    lab = np.asarray(label_map[0]).astype(np.int64)
    voxel_ml = abs(float(np.linalg.det(np.asarray(label_map.affine, dtype=np.float64)[:3, :3]))) / 1000.0
    ids = [i for i in (int(v) for v in np.unique(lab)) if i in names]
    if not ids:
        return {}
    counts = np.bincount(lab.ravel(), minlength=max(ids) + 1)
    on_border = set()
    for axis in range(3):
        for end in (0, -1):
            on_border.update(int(v) for v in np.unique(np.take(lab, end, axis=axis)))
    with np.errstate(invalid="ignore", divide="ignore"):  # scipy divides by the zero count of every absent id
        mean, sd = ndimage.mean(hu, lab, ids), ndimage.standard_deviation(hu, lab, ids)
    low, high = ndimage.minimum(hu, lab, ids), ndimage.maximum(hu, lab, ids)
    return {
        names[i]: {
            "id": i, "voxels": int(counts[i]), "volume_ml": round(float(counts[i]) * voxel_ml, 3),
            "hu_mean": round(float(mean[n]), 2), "hu_sd": round(float(sd[n]), 2),
            "hu_min": float(low[n]), "hu_max": float(high[n]), "incomplete": i in on_border,
        }
        for n, i in enumerate(ids)
    }  # fmt: skip


def segmentation_statistics(
    image: str | os.PathLike, seg: str | os.PathLike, output: str | os.PathLike | None = None, overwrite: bool = False
) -> dict:
    """Statistics (:func:`structure_statistics`) of an existing label map ``seg`` (class-map ids) of the CT
    ``image``, as ``{scan id: {structure: {...}}}`` (the layout of ``segment``'s statistics.json); written to
    ``output`` when given (never over an existing file unless ``overwrite``)."""
    from ctfm.registry import totalsegmentator_classes

    if output is not None and Path(output).exists() and not overwrite:
        raise FileExistsError(f"{output} already exists; choose another --output or pass --overwrite.")
    hu = load_volume(image, ct=True)
    label_map = load_volume(seg)
    check_same_grid(hu, label_map, str(image), str(seg))
    stats = {scan_id(image): structure_statistics(hu, label_map, totalsegmentator_classes())}
    if output is not None:
        write_text_atomic(output, json.dumps(stats, indent=2))
    return stats


# ---------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------
def write_nifti(volume: torch.Tensor, path: Path, dtype=np.uint8) -> Path:
    """A channel-first MetaTensor (one channel or several) as NIfTI on its own affine, through a temporary file."""
    writer = NibabelWriter(output_dtype=dtype)
    array = volume if volume.shape[0] > 1 else volume[0]
    writer.set_data_array(array, channel_dim=0 if volume.shape[0] > 1 else None)
    writer.set_metadata({"affine": volume.affine, "original_affine": volume.affine}, resample=False)
    with atomic_path(path) as tmp:
        writer.write(str(tmp), verbose=False)
    return path


def write_preview(hu: torch.Tensor, label_map: torch.Tensor, names: Mapping[int, str], path: Path, title: str) -> Path:
    """Orthogonal slices through the labelled anatomy, labels over the CT, in the canonical SPL view."""
    from ctfm.transforms import RAS_LABELS
    from ctfm.viz import save_orthogonal_overlay

    to_spl = Orientation(axcodes=ORIENTATION, labels=RAS_LABELS)
    hu_spl, lab_spl = to_spl(hu), to_spl(label_map)
    spacing = np.linalg.norm(np.asarray(lab_spl.affine)[:3, :3], axis=0)
    with atomic_path(path) as tmp:
        save_orthogonal_overlay(hu_spl[0], tmp, label=lab_spl[0], class_names=names, spacing=spacing,
                                title=title, scaled=False)
    return path


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------
def _outputs(sid: str, output_dir: Path, chosen: Mapping[int, str], *, per_structure, probabilities, preview,
             output_type) -> dict[str, Path]:
    """What one scan writes: kind -> path."""
    paths = {"seg": output_dir / f"{sid}_seg.nii.gz", "names": output_dir / f"{sid}_seg.json"}
    if output_type == "dicom_seg":
        paths["dicom_seg"] = output_dir / f"{sid}_seg.dcm"
    if per_structure:
        paths.update({f"mask:{i}": output_dir / f"{sid}_structures" / f"{name}.nii.gz" for i, name in chosen.items()})
    if probabilities:
        paths["probabilities"] = output_dir / f"{sid}_probabilities.nii.gz"
    if preview:
        paths["preview"] = output_dir / f"{sid}_preview.png"
    return paths


def check_inputs(items: Sequence[Mapping], output_type: str = "nifti") -> None:
    """Every scan a readable CT in HU, and for DICOM SEG a DICOM series whose instances can be referenced;
    else a clear error, before any work."""
    if output_type == "dicom_seg":
        from ctfm.dicom_seg import read_series, require_highdicom

        require_highdicom()
    for item in items:
        load_volume(item["image"], ct=True)
        if output_type != "dicom_seg":
            continue
        if not Path(item["image"]).is_dir():
            raise ValueError(f"{item['image']}: --output-type dicom_seg needs DICOM input (a series folder); "
                             "this is a volume file. Use --output-type nifti.")
        read_series(item["image"])


def segment(
    *,
    input: str | os.PathLike | Sequence,
    output_dir: str | os.PathLike,
    weights: str | os.PathLike,
    structures: Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
    per_structure: bool = False,
    probabilities: bool = False,
    statistics: bool = False,
    preview: bool = False,
    output_type: str = "nifti",
    device: str | torch.device = "auto",
    overwrite: bool = False,
    bundles_dir: str | os.PathLike | None = None,
    overrides: Mapping | None = None,
    progress: bool = True,
) -> dict[str, dict[str, Path]]:
    """Segment every scan of ``input`` (a NIfTI/NRRD file, a DICOM series folder, or a folder of those) with the
    whole-body network in ``weights`` (a trained bundle ``model.pt`` or the released whole-body folder), and
    write the outputs the module docstring lists to ``output_dir``. Returns scan id -> kind -> path.

    Args:
        structures, groups: write only these class-map names and label groups (ids kept as in the class map).
        device: ``"auto"`` (a GPU when there is one, else the CPU), or a torch device; the bundle's precision
            (bf16 where the device runs it natively) applies.
        overwrite: replace existing outputs; without it, any existing output stops the run before any work.
        bundles_dir: the bundles/ folder of a checkout (default ``$CTFM_BUNDLES``).
        overrides: bundle config overrides, e.g. ``{"overlap": 0.625}`` or a smaller network for tests.

    Everything is checked before the first scan is segmented: the output type, the names, the weights against
    the network, every input (a readable CT in Hounsfield units) and every output path.
    """
    say = print if progress else (lambda *a, **k: None)
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"--output-type must be one of {', '.join(OUTPUT_TYPES)}, not {output_type!r}.")
    device = resolve_device(device)
    if probabilities:  # they need every class score: MONAI's full stitching (the bundle's postprocessing follows)
        overrides = {**dict(overrides or {}), "stitch": "logits"}
    parser = inference_parser(segmentation_bundle(bundles_dir), device, overrides)
    label_names = {int(k): v for k, v in parser.get_parsed_content("label_names").items()}
    chosen = choose_structures(label_names, structures, groups)

    from ctfm.inference import bf16_convolutions
    from ctfm.weights import load_segmentation_weights

    network = load_segmentation_weights(parser.get_parsed_content("network"), weights).eval()
    network = bf16_convolutions(network, parser.get_parsed_content("precision"))
    items = list_inputs(input)
    check_inputs(items, output_type)
    ids = [scan_id(item["image"]) for item in items]
    if len(set(ids)) < len(ids):  # two folders hold scans of the same name
        ids = [scan_id(item["image"], unique=True) for item in items]
    output_dir = Path(output_dir)
    plan = {sid: _outputs(sid, output_dir, chosen, per_structure=per_structure, probabilities=probabilities,
                          preview=preview, output_type=output_type) for sid in ids}
    stats_path = output_dir / "statistics.json"
    existing = [p for paths in plan.values() for p in paths.values() if p.exists()]
    existing += [stats_path] if statistics and stats_path.exists() else []
    if existing and not overwrite:
        shown = ", ".join(str(p) for p in existing[:3]) + (f" (+{len(existing) - 3} more)" if len(existing) > 3 else "")
        raise FileExistsError(f"{shown} already exist; choose a new --output-dir or pass --overwrite.")
    if output_type == "dicom_seg":
        from ctfm.dicom_seg import write_dicom_seg

    preprocessing = parser.get_parsed_content("preprocessing")
    inferer = parser.get_parsed_content("inferer")
    to_label_map = map_postprocessing(parser.get_parsed_content("postprocessing"))
    invert_probabilities = Invertd("prob", transform=preprocessing, orig_keys="image", nearest_interp=False)
    all_stats = {}
    for n, (item, sid) in enumerate(zip(items, ids), 1):
        start = time.perf_counter()
        say(f"[{n}/{len(items)}] {item['image']}: segmenting on {device}", flush=True)
        data = preprocessing(dict(item))
        batches = ReportWindowBatches(network, window_batches(data["image"].shape[1:], inferer), say)
        with torch.no_grad():  # the label map, or with probabilities every class score (the bundle's `stitch`)
            pred = inferer(data["image"][None].to(device), batches)[0].cpu()
        data["pred"] = MetaTensor(pred, meta=data["image"].meta)
        if probabilities:
            logits = pred.float()
            # softmax of the chosen channels only: no second 118-channel volume in memory
            wanted = torch.exp(logits[list(chosen)] - torch.logsumexp(logits, 0, keepdim=True))
            data["prob"] = MetaTensor(torch.round(wanted * PROBABILITY_SCALE), meta=data["image"].meta)
            data = invert_probabilities(data)
        for step in to_label_map:
            data = step(data)
        label_map = data["pred"].to(torch.uint8)
        label_map[~torch.isin(label_map, torch.tensor(list(chosen), dtype=torch.uint8))] = 0  # only those chosen
        paths = plan[sid]
        source = str(item["image"])
        if output_type == "dicom_seg":  # first: it is the one writer that can refuse (no chosen structure found)
            write_dicom_seg(label_map, source, chosen, paths["dicom_seg"])
        write_nifti(label_map, paths["seg"])
        sidecar = label_names_sidecar(label_map, paths["seg"], source, {str(k): v for k, v in label_names.items()})
        sidecar["structures"] = {str(i): name for i, name in chosen.items()}
        if probabilities:
            sidecar["probabilities"] = {"file": paths["probabilities"].name, "scale": f"p = value / {PROBABILITY_SCALE}",
                                        "channels": [chosen[i] for i in chosen]}
            write_nifti(data["prob"].clamp(0, PROBABILITY_SCALE).round(), paths["probabilities"])
        write_text_atomic(paths["names"], json.dumps(sidecar, indent=2))
        for i in chosen if per_structure else ():
            write_nifti((label_map == i).to(torch.uint8), paths[f"mask:{i}"])
        if statistics or preview:
            hu = load_volume(source, ct=True)
            if statistics:
                all_stats[sid] = structure_statistics(hu, label_map, chosen)
            if preview:
                write_preview(hu, label_map, chosen, paths["preview"], title=sid)
        say(f"[{n}/{len(items)}] {sid}: {len(sidecar['present'])} structures, {time.perf_counter() - start:.1f} s "
            f"-> {paths['seg']}", flush=True)
    if statistics:
        write_text_atomic(stats_path, json.dumps(all_stats, indent=2))
        for paths in plan.values():
            paths["statistics"] = stats_path
    return plan

