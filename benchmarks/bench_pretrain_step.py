"""Pretraining step on the CPU at a tiny configuration: time per step and peak memory.

Target: the bundle's ``ContrastiveTrainer`` step with ``scans_per_forward=1`` (the batch split per
scan, gradients accumulated: what lets the paper's 16 x 20 batch fit on one GPU). Baseline: the
same step with the whole batch in one forward pass. Each runs in its own process so that its peak
resident memory (ru_maxrss) is its own. Tiny config: 2 scans x 4 patches x 2 views of 16 x 32 x 32.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

from benchmarks.common import BUNDLES, REPO  # noqa: E402

BUNDLE = BUNDLES / "ct_fm_pretrain"
SCANS, CROPS, PATCH, STEPS = 2, 4, (16, 32, 32), 4


def one_config(scans_per_forward: int | None) -> dict:
    import torch

    sys.path.insert(0, str(BUNDLE))
    from scripts.losses import build_criterion
    from scripts.model import PretrainingNetwork
    from scripts.trainer import ContrastiveTrainer

    torch.manual_seed(0)
    network = PretrainingNetwork()
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4, weight_decay=1e-6)
    batch = torch.rand(SCANS, CROPS, 2, 1, *PATCH)
    trainer = ContrastiveTrainer(
        device=torch.device("cpu"), max_epochs=1, epoch_length=STEPS + 1, train_data_loader=[batch] * (STEPS + 1),
        network=network, optimizer=optimizer, loss_function=build_criterion("simclr_intrasample"),
        scans_per_forward=scans_per_forward,
    )
    stamps = []
    from ignite.engine import Events

    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: stamps.append(time.perf_counter()))
    trainer.run()
    return {"step_s": (stamps[-1] - stamps[0]) / (len(stamps) - 1),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(scans_per_forward) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_pretrain_step", "--one", json.dumps(scans_per_forward)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from benchmarks.common import write_result

    split = measure(1)
    whole = measure(None)
    write_result(
        "pretrain_step",
        figures={"config": f"{SCANS} scans x {CROPS} patches x 2 views of {list(PATCH)}, CPU, AdamW",
                 "step_s_scans_per_forward_1": round(split["step_s"], 3),
                 "peak_rss_mib_scans_per_forward_1": round(split["peak_rss_mib"])},
        baseline={"step_s_whole_batch": round(whole["step_s"], 3),
                  "peak_rss_mib_whole_batch": round(whole["peak_rss_mib"])},
        ratio={"time_split_over_whole": round(split["step_s"] / whole["step_s"], 2),
               "memory_split_over_whole": round(split["peak_rss_mib"] / whole["peak_rss_mib"], 2)},
        notes=f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; {STEPS} timed steps after 1 warm-up; "
              "RSS includes the 78M-parameter model, its gradients and AdamW state (~1.2 GB) in both.",
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(json.dumps(one_config(json.loads(sys.argv[2]))))
    else:
        main()
