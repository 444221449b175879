"""Exact resume through the bundle CLI: a run killed (SIGKILL) after a checkpoint and started again with the
same command gives the same per-iteration losses and learning rates, the same iteration count and the same
best model as a run never stopped. Tiny shapes, CPU only.

Both runs of a pair run in this process's environment with the same threads, so the losses are equal up
to float noise (compared with ``allclose``, rtol 1e-5); learning rates and iteration counts are compared
exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_runner import BUNDLES, run_bundle

from ctfm.bundles import bundle_command

pytestmark = pytest.mark.slow


def scalars(folder: Path, tag: str) -> dict[int, float]:
    """``{step: value}`` of a TensorBoard tag over every events file in ``folder`` (a resumed run has two)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = {}
    for events in sorted(folder.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            values.update({e.step: e.value for e in acc.Scalars(tag)})
    return values


def run_and_kill(bundle: Path, overrides: dict, checkpoint: Path, timeout: float = 600) -> None:
    """Start the bundle, wait for ``checkpoint`` (written whole, then renamed) and SIGKILL the run."""
    pythonpath = os.pathsep.join(filter(None, [str(bundle), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.Popen(bundle_command(bundle, "train.json", overrides), cwd=bundle, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while not checkpoint.exists():
            assert proc.poll() is None, "the run ended before its first checkpoint"
            assert time.time() < deadline, "no checkpoint in time"
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def _env_threads():
    os.environ.setdefault("OMP_NUM_THREADS", "2")  # the same in every run of a pair


# --- Pretraining ----------------------------------------------------------------------------------

PRETRAIN = BUNDLES / "ct_fm_pretrain"
# 3 epochs of 2 iterations, a checkpoint every 2: each lands on an epoch's end, where the learning rate steps.
PRETRAIN_TINY = {"patch_size": [16, 16, 16], "crops_per_scan": 2, "scans_per_batch": 2, "num_workers": 0,
                 "warmup_epochs": 0, "log_every": 1, "epochs": 3, "epoch_length": 2, "checkpoint_interval": 2,
                 "checkpoints_kept": 1}


@pytest.fixture(scope="module")
def pretrain_cache(tmp_path_factory):
    from ctfm.data.phantoms import write_body_phantoms
    from ctfm.pretraining.prepare import QualityFilters, prepare_cache

    root = tmp_path_factory.mktemp("resume_pretrain")
    items = json.loads(write_body_phantoms(root / "body", num=3, seed=0).read_text())
    sources = [str(root / "body" / d["image"]) for d in items["training"] + items["validation"]]
    prepare_cache(sources, root / "cache", workers=1, filters=QualityFilters(min_slices_exclusive=10))
    return root / "cache"


def test_pretraining_killed_at_an_epoch_end_resumes_exactly(pretrain_cache, tmp_path):
    _env_threads()
    common = {**PRETRAIN_TINY, "dataset_dir": str(pretrain_cache)}
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    run_bundle(PRETRAIN, "train.json", {**common, "output_dir": str(whole)})

    run_and_kill(PRETRAIN, {**common, "output_dir": str(cut)}, cut / "checkpoints" / "checkpoint_iteration=2.pt")
    # What a kill while writing the next checkpoint leaves: a partial file under a temporary name only.
    partial = cut / "checkpoints" / ".checkpoint_iteration=4.pt.x1y2.partial.pt"
    partial.write_bytes((cut / "checkpoints" / "checkpoint_iteration=2.pt").read_bytes()[:5000])
    resumed = run_bundle(PRETRAIN, "train.json", {**common, "output_dir": str(cut)})
    log = resumed.stdout + resumed.stderr
    assert "resumed from" in log and "Epoch: 1/3" not in log, log[-3000:]

    for tag in ("lr", "loss", "positive_similarity"):
        a, b = scalars(whole / "", tag), scalars(cut, tag)
        assert sorted(a) == list(range(1, 7)) and set(range(3, 7)) <= set(b), (tag, a, b)  # after the resume
        steps = sorted(set(a) & set(b))
        if tag == "lr":  # the cosine step of each epoch, at the same iterations
            assert [a[s] for s in steps] == [b[s] for s in steps], (a, b)
        else:  # the same data, crops, views and weights: the same losses
            np.testing.assert_allclose([b[s] for s in steps], [a[s] for s in steps], rtol=1e-5, err_msg=tag)
    final = {name: torch.load(run / "checkpoints" / "checkpoint_final_iteration=6.pt", weights_only=True)
             for name, run in (("whole", whole), ("cut", cut))}
    assert final["whole"]["trainer"]["iteration"] == final["cut"]["trainer"]["iteration"] == 6
    assert final["whole"]["lr_scheduler"] == final["cut"]["lr_scheduler"]

    # A rerun into the same output_dir with another learning rate is refused, naming old -> new.
    refused = run_bundle(PRETRAIN, "train.json", {**common, "output_dir": str(cut), "epochs": 4,
                                                  "learning_rate": 2e-4}, check=False)
    assert refused.returncode != 0
    assert "learning_rate: 0.0001 -> 0.0002" in refused.stderr + refused.stdout, refused.stderr[-3000:]


# --- Segmentation -------------------------------------------------------------------------------

SEGMENTATION = BUNDLES / "ct_fm_segmentation"
# 2 training phantoms, batch 1: 2 iterations an epoch; validated and checkpointed every epoch.
SEG_TINY = {"patch_size": [32, 32, 32], "spacing": [4, 4, 4], "num_workers": 0, "batch_size": 1, "epochs": 5,
            "val_interval": 1, "checkpoint_interval": 1, "warmup_epochs": 1, "learning_rate": 3e-3,
            "network_def#init_filters": 8}


def test_segmentation_killed_after_an_epoch_resumes_exactly_and_keeps_the_best_model(tmp_path):
    from ctfm.data.phantoms import write_body_phantoms

    _env_threads()
    datalist = write_body_phantoms(tmp_path / "body", num=3, seed=0)
    common = {**SEG_TINY, "dataset_dir": str(datalist.parent), "datalist": str(datalist)}
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    run_bundle(SEGMENTATION, "train.json", {**common, "output_dir": str(whole)})

    dice_a = scalars(whole, "val_mean_dice")
    # Measured: the best validation is epoch 4's and epoch 5's is worse. Killed after epoch 4, a resume that
    # forgot the best score would save epoch 5's model as the best.
    assert max(dice_a, key=dice_a.get) == 4 and dice_a[5] < dice_a[4], f"the run no longer shows the case: {dice_a}"

    run_and_kill(SEGMENTATION, {**common, "output_dir": str(cut)}, cut / "models" / "checkpoint_epoch=4.pt")
    resumed = run_bundle(SEGMENTATION, "train.json", {**common, "output_dir": str(cut)})
    log = resumed.stdout + resumed.stderr
    assert "Epoch: 4/5" not in log and "Epoch: 5/5" in log, log[-3000:]

    a, b = scalars(whole, "train_loss"), scalars(cut, "train_loss")
    assert sorted(a) == list(range(1, 11)) and {9, 10} <= set(b), (a, b)  # epoch 5: after the resume
    steps = sorted(set(a) & set(b))
    np.testing.assert_allclose([b[s] for s in steps], [a[s] for s in steps], rtol=1e-5)
    dice_b = scalars(cut, "val_mean_dice")
    np.testing.assert_allclose(dice_b[5], dice_a[5], rtol=1e-5)

    final = {name: torch.load(run / "models" / "checkpoint_epoch=5.pt", weights_only=True)
             for name, run in (("whole", whole), ("cut", cut))}
    assert final["whole"]["trainer"]["iteration"] == final["cut"]["trainer"]["iteration"] == 10
    assert final["whole"]["lr_scheduler"] == final["cut"]["lr_scheduler"]
    assert final["cut"]["optimizer"]["param_groups"][0]["lr"] == final["whole"]["optimizer"]["param_groups"][0]["lr"]
    # The best score and its epoch survive the resume, and model.pt is that epoch's model in both runs.
    assert final["cut"]["best_metric"] == final["whole"]["best_metric"], (final["cut"]["best_metric"], dice_a)
    best = {name: torch.load(run / "models" / "model.pt", weights_only=True) for name, run in (("whole", whole), ("cut", cut))}
    for key, value in best["whole"].items():
        torch.testing.assert_close(best["cut"][key], value, rtol=1e-5, atol=1e-6)
    assert sorted(p.name for p in (cut / "models").glob("*.pt")) == ["checkpoint_epoch=5.pt", "model.pt"]
