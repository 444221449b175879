"""CPU seconds per volume for ct_fm_segmentation inference on the real sample CT, tuned vs MONAI default.

Baseline (measured in the same run): MONAI ``SlidingWindowInferer`` in fp32, overlap 0.625,
sw_batch_size 1 (the authors' inference overlap, Gaussian weighting). Target: the bundle's
``inference.json`` defaults (precision, overlap, sw_batch_size read from that file). Both segment the
real abdomen CT (TotalSegmentator 2.18 example) resampled to the bundle's 1.5 mm, SPL, at the
paper's patch 96 x 160 x 160. Reported: seconds, achieved GFLOP/s next to the CPU's measured
matrix-multiply peak (fp32 and bf16), and how well the two label maps agree (mean per-structure
Dice over structures present in either map). With random weights (the default here) the logits of
the 118 classes are nearly tied, so agreement is low by construction; pass ``--weights`` with a
network trained on the sample CT to measure the agreement that the target refers to, or
``--train-epochs N`` to first train the bundle on the sample CT through ``python -m monai.bundle run``
(one 48 x 64 x 64 patch at 1.5 mm per epoch, lr 3e-4; 150 epochs took 29 min on 2 cores) and use that.

    python -m benchmarks bench_segmentation_inference      # paper size: minutes per run on 2 cores
    python -m benchmarks bench_segmentation_inference --train-epochs 150   # + ~30 min of training
    python benchmarks/bench_segmentation_inference.py --smoke   # 6 mm, 32^3 patches: seconds
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "ct_fm_segmentation"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PAPER_PATCH = (96, 160, 160)
BASELINE = {"precision": "fp32", "overlap": 0.625, "sw_batch_size": 1}


def bundle_defaults() -> dict:
    """The tuned settings: the bundle's inference.json defaults (one home for them)."""
    config = json.loads((BUNDLE / "configs" / "inference.json").read_text())
    return {k: config[k] for k in ("precision", "overlap", "sw_batch_size")}


def matmul_peak_gflops(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def window_gflop(network, patch, device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        network(torch.zeros(1, 1, *patch, device=device))
    return counter.get_total_flops() / 1e9


class CountingNetwork(torch.nn.Module):
    """Counts the windows the inferer feeds the network."""

    def __init__(self, network):
        super().__init__()
        self.network, self.windows = network, 0

    def forward(self, x):
        self.windows += x.shape[0]
        return self.network(x)


def segment(image, network, patch, device, precision, overlap, sw_batch_size) -> dict:
    from scripts.inferer import AutocastSlidingWindowInferer

    counting = CountingNetwork(network)
    inferer = AutocastSlidingWindowInferer(roi_size=patch, sw_batch_size=sw_batch_size, overlap=overlap,
                                           mode="gaussian", precision=precision)
    _sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        label = inferer(image[None].to(device), counting).argmax(1).cpu()
    _sync(device)
    return {"seconds": time.perf_counter() - t0, "windows": counting.windows, "label": label}


def train_on_sample_ct(epochs: int, output_dir: Path) -> tuple[Path, float]:
    """Train the bundle (random init) on the real sample CT and its TotalSegmentator labels; validate
    on the same CT at the end. Returns the best model and its validation mean Dice. Reuses a finished
    run in ``output_dir`` (``resume``-free: the bundle refuses to overwrite, so a new folder per run)."""
    from ctfm.data.sample_ct import fetch_sample_ct
    from ctfm_tools.bundle_run import run_bundle

    model = output_dir / "models" / "model.pt"
    if not model.is_file():
        sample = fetch_sample_ct()
        entry = {"image": str(sample.abdomen_ct), "label": str(sample.abdomen_label)}
        output_dir.mkdir(parents=True, exist_ok=True)
        datalist = output_dir / "datalist.json"
        datalist.write_text(json.dumps({"training": [entry], "validation": [entry]}))
        run_bundle(BUNDLE, "train.json", {
            "dataset_dir": str(output_dir), "datalist": str(datalist), "output_dir": str(output_dir),
            "patch_size": [48, 64, 64], "spacing": [1.5, 1.5, 1.5], "epochs": epochs,
            "val_interval": max(epochs // 3, 1), "warmup_epochs": 20, "learning_rate": 1e-3, "batch_size": 1,
            "num_workers": 0, "cache_rate": 1.0, "checkpoint_interval": 25,
        }, capture=False)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    dice = []
    for events in sorted(output_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if "val_mean_dice" in acc.Tags()["scalars"]:
            dice += [e.value for e in acc.Scalars("val_mean_dice")]
    return model, max(dice) if dice else float("nan")


def compare(device: str = "cpu", smoke: bool = False, weights: str | None = None, train_epochs: int = 0) -> dict:
    sys.path.insert(0, str(BUNDLE))  # the bundle's scripts package
    from scripts.evaluation import StructureDice

    from ctfm.metrics import macro_mean

    from benchmarks.common import write_result
    from ctfm.data.sample_ct import fetch_sample_ct
    from ctfm.networks import build_segmentation_network
    from ctfm.transforms import preprocess
    from ctfm.weights import load_network_weights

    weights_dice = None
    if train_epochs:
        from benchmarks.common import RESULTS

        model, weights_dice = train_on_sample_ct(train_epochs, RESULTS / f"segmentation_sample_ct_{train_epochs}_epochs")
        weights = str(model)
        print(f"trained on the sample CT for {train_epochs} epochs: validation mean Dice {weights_dice:.3f}", flush=True)
    device = torch.device(device)
    spacing, patch = ((6.0, 6.0, 6.0), (32, 32, 32)) if smoke else ((1.5, 1.5, 1.5), PAPER_PATCH)
    image = preprocess(fetch_sample_ct().abdomen_ct, spacing=spacing)
    torch.manual_seed(0)
    network = build_segmentation_network(out_channels=118).to(device).eval()
    if weights:
        load_network_weights(network, weights)
    tuned = bundle_defaults()
    print(f"image {tuple(image.shape[1:])} voxels at {spacing} mm, patch {patch}, device {device}", flush=True)
    base = segment(image, network, patch, device, **BASELINE)
    print(f"baseline {BASELINE}: {base['seconds']:.1f} s", flush=True)
    fast = segment(image, network, patch, device, **tuned)
    print(f"tuned {tuned}: {fast['seconds']:.1f} s", flush=True)

    agreement = macro_mean(StructureDice(num_classes=118)(fast["label"][:, None], base["label"][:, None]).numpy())
    gflop = window_gflop(network, patch, device)
    dtype_peak = {p: matmul_peak_gflops(device, d) for p, d in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    name = "segmentation_inference" + ("_gpu" if device.type == "cuda" else "") + ("_smoke" if smoke else "")
    return write_result(
        name,
        figures={
            "tuned_settings": tuned,
            "tuned_seconds_per_volume": round(fast["seconds"], 2),
            "tuned_windows": fast["windows"],
            "tuned_gflops_per_s": round(gflop * fast["windows"] / fast["seconds"], 1),
            "label_agreement_mean_structure_dice": round(agreement, 4),
            "matmul_peak_gflops_fp32": round(dtype_peak["fp32"], 1),
            "matmul_peak_gflops_bf16": round(dtype_peak["bf16"], 1),
            "gflop_per_window": round(gflop, 1),
            "image_voxels": list(image.shape[1:]),
            "spacing_mm": list(spacing),
            "patch": list(patch),
            "weights": weights or "random (seed 0)",
            "weights_mean_dice_on_sample_ct": None if weights_dice is None else round(weights_dice, 4),
        },
        baseline={
            "settings": BASELINE,
            "seconds_per_volume": round(base["seconds"], 2),
            "windows": base["windows"],
            "gflops_per_s": round(gflop * base["windows"] / base["seconds"], 1),
        },
        ratio={"speedup": round(base["seconds"] / fast["seconds"], 2)},
        notes="target: speedup >= 3 and agreement >= 0.98 with weights trained on the sample CT; "
        "random weights make near-tied logits, so their agreement is not the target's",
    )


def main(argv=None, device: str = "cpu") -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny size (6 mm, 32^3 patches): checks the script runs")
    parser.add_argument("--weights", default=None, help="segmentation weights (e.g. trained on the sample CT)")
    parser.add_argument("--train-epochs", type=int, default=0,
                        help="first train the bundle on the sample CT for this many epochs and use those weights")
    args, _ = parser.parse_known_args(argv)  # `python -m benchmarks <name>` leaves the name in argv
    compare(device=device, smoke=args.smoke, weights=args.weights, train_epochs=args.train_epochs)


if __name__ == "__main__":
    main()
