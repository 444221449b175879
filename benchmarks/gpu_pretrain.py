"""GPU benchmark of CT-FM pretraining at the paper's configuration (run by benchmarks/gpu.sh).

The paper's batch: 16 scans x 20 patches x 2 views of 24 x 128 x 128 voxels, bf16 autocast, through
the bundle's own ``ContrastiveTrainer`` (AdamW, intra-sample NT-Xent). Reports steps/s, achieved
TFLOP/s (FLOPs counted by ``torch.utils.flop_counter``) against the GPU's bf16 dense peak, peak
memory, and whether the bundle's data loader (reading a synthetic cache with ``--workers``
processes) delivers batches faster than the GPU consumes them. ``--scans-per-forward`` splits the
batch (gradients accumulated; halved automatically on out-of-memory).

    python -m benchmarks.gpu_pretrain                 # on the GPU machine
    python -m benchmarks.gpu_pretrain --smoke         # tiny, CPU: checks the script runs
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import BUNDLES  # noqa: E402

BUNDLE = BUNDLES / "ct_fm_pretrain"
sys.path.insert(0, str(BUNDLE))

# bf16 dense tensor-core peak, TFLOP/s (vendor data sheets; SXM parts).
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10": 125.0}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU")
    p.add_argument("--scans", type=int, default=16)
    p.add_argument("--crops", type=int, default=20)
    p.add_argument("--patch", type=int, nargs=3, default=(24, 128, 128))
    p.add_argument("--scans-per-forward", type=int, default=4)
    p.add_argument("--steps", type=int, default=6, help="timed steps (after 2 warm-up steps)")
    p.add_argument("--workers", type=int, default=12, help="data-loader worker processes")
    p.add_argument("--loader-batches", type=int, default=6)
    args = p.parse_args()
    if args.smoke:
        args.scans, args.crops, args.patch, args.scans_per_forward = 2, 2, (16, 32, 32), 1
        args.steps, args.workers, args.loader_batches = 2, 0, 2
    return args


def train_steps(args, device) -> dict:
    from ignite.engine import Events
    from scripts.augment import BatchedViewAugmentation
    from scripts.losses import build_criterion
    from scripts.model import PretrainingNetwork
    from scripts.trainer import ContrastiveTrainer

    network = PretrainingNetwork().to(device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4, weight_decay=1e-6)
    batch = torch.rand(args.scans, args.crops, 2, 1, *args.patch)
    if device.type == "cuda":
        batch = batch.pin_memory()
    spf = args.scans_per_forward
    while True:
        trainer = ContrastiveTrainer(
            device=device, max_epochs=1, epoch_length=args.steps + 2, train_data_loader=[batch] * (args.steps + 2),
            network=network, optimizer=optimizer, loss_function=build_criterion("simclr_intrasample"),
            amp=device.type == "cuda", amp_kwargs={"dtype": torch.bfloat16}, scans_per_forward=spf,
            device_augmentation=BatchedViewAugmentation(),  # the step includes it, as in train.json
        )
        times = []

        def stamp(engine):
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter())

        trainer.add_event_handler(Events.ITERATION_COMPLETED, stamp)
        try:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            trainer.run()
            break
        except torch.OutOfMemoryError:
            if spf == 1:
                raise
            spf = max(1, spf // 2)
            print(f"out of memory; retrying with scans_per_forward={spf}", flush=True)
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
    step_s = (times[-1] - times[1]) / (len(times) - 2)
    flops = count_step_flops(network, batch[: spf].to(device), device)  # FLOPs scale with scans: one part
    total_flops = flops * args.scans / spf
    return {
        "scans_per_forward": spf,
        "step_s": round(step_s, 4),
        "steps_per_s": round(1 / step_s, 3),
        "view_pairs_per_s": round(args.scans * args.crops / step_s, 1),
        "tflop_per_step": round(total_flops / 1e12, 3),
        "achieved_tflops": round(total_flops / step_s / 1e12, 2),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
    }


def count_step_flops(network, part, device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        with torch.autocast(device.type, enabled=device.type == "cuda", dtype=torch.bfloat16):
            _, projection, _ = network(part.flatten(0, 2), project=True)
        projection.float().sum().backward()
    network.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def loader_rate(args) -> dict:
    """Batches/s of the bundle's own loader (train.json) over a synthetic int16 cache."""
    from monai.bundle import ConfigParser

    rng = np.random.default_rng(0)
    shape = (40, 64, 64) if args.smoke else (120, 320, 320)  # a typical body CT at 3 x 1 x 1 mm
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i in range(4):
            files.append(str(Path(tmp) / f"s{i}.npy"))
            np.save(files[-1], rng.integers(-1024, 1500, size=shape, dtype=np.int16))
        items = [{"image": files[i % 4]} for i in range(args.scans * (args.loader_batches + 1))]
        parser = ConfigParser()
        parser.read_config(str(BUNDLE / "configs" / "train.json"))
        parser.update({"patch_size": list(args.patch), "crops_per_scan": args.crops, "scans_per_batch": args.scans,
                       "num_workers": args.workers, "output_dir": tmp, "train#dataset#data": items})
        loader = parser.get_parsed_content("train#dataloader")
        it = iter(loader)
        next(it)  # workers started
        t0 = time.perf_counter()
        n = 0
        for _ in range(args.loader_batches):
            next(it)
            n += 1
        rate = n / (time.perf_counter() - t0)
    return {"loader_batches_per_s": round(rate, 3), "loader_workers": args.workers, "cache_volume_shape": list(shape)}


def main() -> None:
    from benchmarks.common import write_result

    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    step = train_steps(args, device)
    loader = loader_rate(args)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    figures = {"device": name, "scans": args.scans, "crops": args.crops, "patch": list(args.patch), **step, **loader}
    ratio = {
        "fraction_of_bf16_peak": round(step["achieved_tflops"] / peak, 3) if peak else None,
        "loader_over_gpu_rate": round(loader["loader_batches_per_s"] * step["step_s"], 2),
    }
    notes = ("loader keeps the GPU busy" if ratio["loader_over_gpu_rate"] >= 1
             else "the GPU waits for data: add workers")
    write_result("gpu_pretrain_smoke" if args.smoke else "gpu_pretrain", figures,
                 baseline={"peak_bf16_tflops": peak}, ratio=ratio, notes=notes)


if __name__ == "__main__":
    main()
