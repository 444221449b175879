"""The benchmark scripts still run (tiny sizes): a benchmark that breaks silently measures nothing.

Full-size numbers come from ``python -m benchmarks <name>`` on an idle machine, never from tests.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
if str(REPO) not in sys.path:  # the benchmarks package lives at the repository root
    sys.path.insert(0, str(REPO))


def run_benchmark(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_segmentation_inference_benchmark_smoke():
    """Two training steps on the sample CT (the helper behind ``--train-steps``), then the comparison."""
    from benchmarks.bench_segmentation_inference import TRAIN_PATCH, training_run_name

    run = training_run_name(10, 2, TRAIN_PATCH)
    shutil.rmtree(RESULTS / run, ignore_errors=True)
    run_benchmark("bench_segmentation_inference", "--smoke", "--train-steps", "2")
    result = json.loads((RESULTS / "segmentation_inference_smoke.json").read_text())
    figures = result["figures"]
    assert result["ratio"]["speedup"] > 0
    # after two steps the maps may hold none of the ten trained structures: then that mean is None, never NaN
    labelled = figures["label_agreement_mean_structure_dice"]
    assert labelled is None or 0 <= labelled <= 1
    assert 0 <= figures["label_agreement_mean_structure_dice_any_structure_either_map"] <= 1
    assert figures["tuned_windows"] > 0 and result["baseline"]["windows"] > 0
    # B, the defaults at the authors' overlap: the baseline's windows, the defaults' precision and stitching
    same_overlap = figures["at_authors_overlap"]
    assert same_overlap["windows"] == result["baseline"]["windows"]
    assert result["ratio"]["speedup_at_authors_overlap"] > 0
    assert same_overlap["settings"]["overlap"] == result["baseline"]["settings"]["overlap"]
    assert 0 <= same_overlap["label_agreement"]["mean_structure_dice_any_structure_either_map"] <= 1
    assert figures["weights"].endswith(f"{run}/model.pt")
    assert not (RESULTS / run / "checkpoint.pt").exists()  # a finished run
    assert set(figures["mean_structure_dice_vs_sample_ct_labels"]) == {"baseline", "at_authors_overlap", "tuned"}


@pytest.mark.slow
def test_search_benchmark_smoke():
    run_benchmark("bench_search", "--smoke")
    result = json.loads((RESULTS / "search_smoke.json").read_text())
    assert result["figures"]["pooled_encoder_passes"] < result["baseline"]["per_window_encoder_passes"]
    # the query is a grid window of the real CT: the one-pass search finds the same best window
    assert result["figures"]["same_best_match"] == 1 and result["figures"]["best_matches_apart_voxels"] == [0, 0, 0]


def test_unknown_benchmark_is_named():
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "bench_nothing"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0 and "bench_search" in proc.stderr


@pytest.mark.slow
def test_search_app_benchmark_smoke():
    run_benchmark("bench_search_app", "--smoke")
    result = json.loads((RESULTS / "search_app_smoke.json").read_text())
    figures = result["figures"]
    # a cold target shows the coarse match before the final one; the second query only pools
    assert figures["cold_first_answer_stage"] == "coarse"
    assert figures["cold_first_answer_s"] < figures["cold_final_match_s"]
    assert figures["second_query_stages"] == ["final"] and figures["second_query_s"] < figures["cold_final_match_s"]
