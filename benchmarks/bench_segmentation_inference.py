"""CPU seconds per volume for ct_fm_segmentation inference on the real sample CT, tuned vs the authors' evaluation settings.

The baseline is the authors' sliding window (overlap 0.625, gaussian; their TotalSegmentator evaluation)
in fp32; MONAI's own ``SlidingWindowInferer`` default overlap is 0.25, so it is not called MONAI's default here.

Baseline (A, measured in the same run): the authors' settings, MONAI ``SlidingWindowInferer`` in fp32, overlap
0.625, sw_batch_size 1 (the authors' inference overlap, Gaussian weighting), MONAI's stitching of every class score
then argmax. Target (C): the bundle's ``inference.json`` defaults (precision, overlap, sw_batch_size, channels_last
and stitch read from that file; stitch "labels" streams the label map); and B, those defaults at the authors'
overlap 0.625 (what precision, memory order and stitching gain alone). All three segment the
real abdomen CT (TotalSegmentator 2.18 example) resampled to the bundle's 1.5 mm, SPL, at the
paper's patch 96 x 160 x 160. Reported: seconds, achieved GFLOP/s next to the CPU's measured
matrix-multiply peak (fp32 and bf16), how well the two label maps agree (mean per-structure Dice over
the structures of the label map the weights were fit to, each listed; and over every structure either
map holds), and how well each matches the sample CT's own labels. With random
weights (the default here) the logits of the 118 classes are nearly tied, so agreement is low by
construction; the target's agreement is with weights trained on the sample CT: ``--train-steps N``
first fits the bundle's network to the CT's 10 largest structures (``--train-structures``; see
``train_on_sample_ct`` for why not all 62) on 48 x 64 x 64 crops (``--train-patch``; 2.7 s a step
on 2 cores), or pass weights with ``--weights``. On a GPU (``--train-device cuda``, as ``gpu.sh`` runs it),
500 steps at the paper's patch take 1 min and reach agreement 0.981 (bundle README, Performance).

    python -m benchmarks bench_segmentation_inference      # paper size: ~11 min per run on 2 cores
    python -m benchmarks bench_segmentation_inference --train-steps 800   # + ~36 min of training
    python -m benchmarks bench_segmentation_inference --smoke --train-steps 2   # 6 mm, 32^3 patches: seconds
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import BUNDLES  # noqa: E402

BUNDLE = BUNDLES / "ct_fm_segmentation"

PAPER_PATCH = (96, 160, 160)
# Training crops for the agreement weights (axes S-I, P-A, L-R: the bundle's SPL order). Measured on
# 2 cores: 800 steps of 48 x 64 x 64 (2.7 s each, 36 min) reached Dice 0.45 against the labels and
# agreement 0.876; 450 steps of 48 x 80 x 160 (7 s each, 53 min; wider left-right context) only 0.17
# and 0.80. Small crops, more steps.
TRAIN_PATCH = (48, 64, 64)
BASELINE = {"precision": "fp32", "overlap": 0.625, "sw_batch_size": 1, "channels_last": False, "stitch": "logits"}


def finite_or_none(value: float, digits: int = 4) -> float | None:
    """``value`` rounded, or None where it is NaN (JSON has no NaN)."""
    return None if np.isnan(value) else round(float(value), digits)


def bundle_defaults() -> dict:
    """The tuned settings: the bundle's inference.json defaults (one home for them)."""
    config = json.loads((BUNDLE / "configs" / "inference.json").read_text())
    return {k: config[k] for k in ("precision", "overlap", "sw_batch_size", "channels_last", "stitch")}


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


def segment(image, network, patch, device, precision, overlap, sw_batch_size, channels_last, stitch) -> dict:
    from ctfm.inference import AutocastSlidingWindowInferer

    counting = CountingNetwork(network)
    inferer = AutocastSlidingWindowInferer(roi_size=patch, sw_batch_size=sw_batch_size, overlap=overlap,
                                           mode="gaussian", precision=precision, channels_last=channels_last,
                                           stitch=stitch)
    _sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = inferer(image[None].to(device), counting)
        label = (out[:, 0].long() if stitch == "labels" else out.argmax(1)).cpu()  # labels: streamed argmax
    _sync(device)
    return {"seconds": time.perf_counter() - t0, "windows": counting.windows, "label": label}


def train_on_sample_ct(steps: int, structures: int, output_dir: Path, patch=TRAIN_PATCH,
                       log_every: int = 50, device: str = "cpu") -> tuple[Path, Path]:
    """Fit the bundle's network (all 118 outputs) to the real sample CT's ``structures`` largest
    TotalSegmentator structures, for the agreement figure: weights whose logits mean something.

    Why not all 62 structures of the CT: on 2 CPU cores, 250 to 325 steps (11 to 14 min) of either this loop
    or the bundle's own train.json left the network at validation Dice 0.003 and a training loss still near
    5.6; fitting them all takes far longer than a benchmark should there. On an H200 (``device="cuda"``,
    paper patch) 1200 steps of 0.13 s fit all 62 to Dice 0.85, agreement 0.949. The network, loss, optimizer
    and class-balanced crops are the ones in ``train.json`` (parsed from it); what differs is on purpose: no
    augmentation (memorising one CT is the point), one ``patch`` crop per step, warm-up then cosine over
    ``steps``, and bf16 autocast on channels-last crops on ``device`` (on the CPU, forward and backward at
    96 x 160 x 160 in bf16: 25 s in the default order, 14 s channels-last; 48 x 64 x 64 crops in bf16 took
    2.7 s a step against 5 s in fp32; ``device="cuda"`` is how the prepared GPU script fits it at the
    paper's patch). The weights load on any device. Saves a resumable ``checkpoint.pt`` every ``log_every``
    steps and ``model.pt`` (a state dict) at the end; a finished run is reused, a killed one resumes.
    Returns the model and the label map it was trained on."""
    from monai.bundle import ConfigParser
    from monai.optimizers import WarmupCosineSchedule

    from ctfm.data.labels import keep_largest_structures
    from ctfm.data.sample_ct import fetch_sample_ct

    model, checkpoint = output_dir / "model.pt", output_dir / "checkpoint.pt"
    label = output_dir / f"label_{structures}_largest.nii.gz"
    if model.is_file():
        return model, label
    sample = fetch_sample_ct()
    output_dir.mkdir(parents=True, exist_ok=True)
    keep_largest_structures(sample.abdomen_label, structures, label)
    datalist = output_dir / "datalist.json"
    datalist.write_text(json.dumps({"training": [{"image": str(sample.abdomen_ct), "label": str(label)}]}))
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser.read_meta(str(BUNDLE / "configs" / "metadata.json"))
    parser.update({"bundle_root": str(BUNDLE), "dataset_dir": str(output_dir), "datalist": str(datalist),
                   "device": f"$torch.device('{device}')", "patch_size": list(patch), "cache_rate": 1.0,
                   "num_workers": 0, "learning_rate": 4e-4})
    parser["train#random_transforms"] = parser["train#random_transforms"][:2]  # crop, drop the indices
    network, loss_fn, optimizer = (parser.get_parsed_content(k) for k in ("network", "loss", "optimizer"))
    dataset = parser.get_parsed_content("train#dataset")
    schedule = WarmupCosineSchedule(optimizer, warmup_steps=20, t_total=steps, warmup_multiplier=0.1, end_lr=2e-6)
    start, losses = 0, []
    torch.backends.cudnn.benchmark = True  # one crop size throughout: let cuDNN pick its fastest kernels
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=True, map_location=device)
        network.load_state_dict(state["model"]), optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start = state["step"]
        print(f"resuming at step {start} of {steps}", flush=True)
    torch.manual_seed(start)
    network.train()
    t0 = time.perf_counter()
    for step in range(start + 1, steps + 1):
        patch = dataset[0][0]
        image, target = (patch[k][None].as_tensor().to(device, non_blocking=True) for k in ("image", "label"))
        image = image.to(memory_format=torch.channels_last_3d)
        optimizer.zero_grad()
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            outputs = network(image)
        loss = loss_fn([o.float() for o in outputs], target)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % log_every == 0 or step == steps:
            print(f"step {step}/{steps}  loss {np.mean(losses[-log_every:]):.3f}  "
                  f"{(time.perf_counter() - t0) / (step - start):.2f} s/step", flush=True)
            torch.save({"model": network.state_dict(), "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(), "step": step}, checkpoint)
    torch.save(network.state_dict(), model)
    checkpoint.unlink()
    return model, label


def per_structure_dice(prediction, truth) -> np.ndarray:
    """Dice of structures 1..117 (label maps, same grid); NaN where a structure is in neither map."""
    from scripts.evaluation import StructureDice

    return StructureDice(num_classes=118)(prediction[:, None], truth[:, None]).numpy()[0]


def training_run_name(structures: int, steps: int, patch) -> str:
    """The folder (under benchmarks/results) of one training run: reused when finished, resumed when killed."""
    return f"segmentation_sample_ct_{structures}_structures_{steps}_steps_{'x'.join(map(str, patch))}"


def compare(device: str = "cpu", smoke: bool = False, weights: str | None = None, train_steps: int = 0,
            train_structures: int = 10, train_patch=TRAIN_PATCH, train_device: str = "cpu") -> dict:
    sys.path.insert(0, str(BUNDLE))  # the bundle's scripts package
    from benchmarks.common import RESULTS, write_result
    from ctfm.data.sample_ct import fetch_sample_ct
    from ctfm.inference import bf16_convolutions
    from ctfm.metrics import macro_mean
    from ctfm.networks import build_segmentation_network
    from ctfm.registry import totalsegmentator_classes
    from ctfm.transforms import ct_fm_transforms
    from ctfm.weights import load_network_weights

    sample = fetch_sample_ct()
    label_path = sample.abdomen_label
    if train_steps:
        run = RESULTS / training_run_name(train_structures, train_steps, train_patch)
        model, label_path = train_on_sample_ct(train_steps, train_structures, run, train_patch, device=train_device)
        weights = str(model)
        print(f"trained on the sample CT's {train_structures} largest structures for {train_steps} steps: {weights}",
              flush=True)
    device = torch.device(device)
    spacing, patch = ((6.0, 6.0, 6.0), (32, 32, 32)) if smoke else ((1.5, 1.5, 1.5), PAPER_PATCH)
    volume = ct_fm_transforms(label_key="label", spacing=spacing)({"image": str(sample.abdomen_ct),
                                                                   "label": str(label_path)})
    image, truth = volume["image"], volume["label"].long()
    torch.manual_seed(0)
    network = build_segmentation_network(out_channels=118).to(device).eval()
    if weights:
        load_network_weights(network, weights)
    tuned = bundle_defaults()
    print(f"image {tuple(image.shape[1:])} voxels at {spacing} mm, patch {patch}, device {device}", flush=True)
    gflop = window_gflop(network, patch, device)  # counted in fp32, before the tuned run's bf16 weights
    base = segment(image, network, patch, device, **BASELINE)
    print(f"A, baseline {BASELINE}: {base['seconds']:.1f} s", flush=True)
    bf16_convolutions(network, tuned["precision"])  # as inference.json does after loading (after the fp32 baseline)
    at_overlap = {**tuned, "overlap": BASELINE["overlap"]}  # what precision and stitching alone gain
    same_overlap = segment(image, network, patch, device, **at_overlap)
    print(f"B, the defaults at the authors' overlap {at_overlap}: {same_overlap['seconds']:.1f} s", flush=True)
    fast = segment(image, network, patch, device, **tuned)
    print(f"C, the defaults {tuned}: {fast['seconds']:.1f} s", flush=True)

    # Agreement over the structures the weights were trained on (those in the label map), and over every
    # structure either map holds: an undertrained network leaves stray specks of classes it never saw,
    # and each speck counts as much as the liver in the second mean.
    labelled = np.unique(truth.numpy())
    labelled = labelled[labelled > 0].astype(int)
    names = totalsegmentator_classes()

    def agreement_with_baseline(run: dict) -> dict:
        agreement = per_structure_dice(run["label"], base["label"])
        return {
            # None: neither map holds a labelled structure (an undertrained network, such as the smoke test's)
            "mean_structure_dice": finite_or_none(macro_mean(agreement[None, labelled - 1])),
            "per_labelled_structure": {names[c]: finite_or_none(agreement[c - 1]) for c in labelled},
            "mean_structure_dice_any_structure_either_map": round(macro_mean(agreement[None]), 4),
            "structures_in_either_map": int(np.sum(~np.isnan(agreement))),
        }

    agreement, agreement_same_overlap = agreement_with_baseline(fast), agreement_with_baseline(same_overlap)
    accuracy = {k: round(macro_mean(per_structure_dice(run["label"], truth)[None]), 4)
                for k, run in (("baseline", base), ("at_authors_overlap", same_overlap), ("tuned", fast))}
    dtype_peak = {p: matmul_peak_gflops(device, d) for p, d in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    name = "segmentation_inference" + ("_gpu" if device.type == "cuda" else "") + ("_smoke" if smoke else "")
    return write_result(
        name,
        figures={
            "tuned_settings": tuned,
            "tuned_seconds_per_volume": round(fast["seconds"], 2),
            "tuned_windows": fast["windows"],
            "tuned_gflops_per_s": round(gflop * fast["windows"] / fast["seconds"], 1),
            "label_agreement_mean_structure_dice": agreement["mean_structure_dice"],
            "label_agreement_per_labelled_structure": agreement["per_labelled_structure"],
            "label_agreement_mean_structure_dice_any_structure_either_map":
                agreement["mean_structure_dice_any_structure_either_map"],
            "structures_in_either_map": agreement["structures_in_either_map"],
            "at_authors_overlap": {
                "settings": at_overlap,
                "seconds_per_volume": round(same_overlap["seconds"], 2),
                "windows": same_overlap["windows"],
                "gflops_per_s": round(gflop * same_overlap["windows"] / same_overlap["seconds"], 1),
                "label_agreement": agreement_same_overlap,
            },
            "matmul_peak_gflops_fp32": round(dtype_peak["fp32"], 1),
            "matmul_peak_gflops_bf16": round(dtype_peak["bf16"], 1),
            "gflop_per_window": round(gflop, 1),
            "image_voxels": list(image.shape[1:]),
            "spacing_mm": list(spacing),
            "patch": list(patch),
            "weights": weights or "random (seed 0)",
            "weights_training": {"steps": train_steps, "largest_structures": train_structures,
                                 "crop": list(train_patch)} if train_steps else None,
            "mean_structure_dice_vs_sample_ct_labels": accuracy,
        },
        baseline={
            "name": "the authors' evaluation settings in fp32 (overlap 0.625, gaussian); not MONAI's default (0.25)",
            "settings": BASELINE,
            "seconds_per_volume": round(base["seconds"], 2),
            "windows": base["windows"],
            "gflops_per_s": round(gflop * base["windows"] / base["seconds"], 1),
        },
        ratio={"speedup": round(base["seconds"] / fast["seconds"], 2),
               "speedup_at_authors_overlap": round(base["seconds"] / same_overlap["seconds"], 2)},
        notes="targets against the baseline, with weights trained on the sample CT: at the authors' overlap >= 2.5x "
        "with agreement >= 0.99; the defaults >= 4x, agreement reported. Random weights make near-tied logits, so "
        "their agreement is not the targets'",
    )


def main(argv=None, device: str = "cpu") -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny size (6 mm, 32^3 patches): checks the script runs")
    parser.add_argument("--weights", default=None, help="segmentation weights (e.g. trained on the sample CT)")
    parser.add_argument("--train-steps", type=int, default=0,
                        help="first fit the bundle's network to the sample CT for this many steps and use it")
    parser.add_argument("--train-structures", type=int, default=10,
                        help="train on the sample CT's this many largest structures (all 62: far longer)")
    parser.add_argument("--train-patch", type=int, nargs=3, default=TRAIN_PATCH, metavar=("SI", "AP", "LR"),
                        help="training crop in voxels at 1.5 mm")
    parser.add_argument("--train-device", default="cpu", help="where to train (cuda: the prepared GPU script)")
    args, _ = parser.parse_known_args(argv)  # `python -m benchmarks <name>` leaves the name in argv
    compare(device=device, smoke=args.smoke, weights=args.weights, train_steps=args.train_steps,
            train_structures=args.train_structures, train_patch=tuple(args.train_patch),
            train_device=args.train_device)


if __name__ == "__main__":
    main()
