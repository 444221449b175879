"""The benchmark scripts still run (tiny sizes): a benchmark that breaks silently measures nothing.

Full-size numbers come from ``python -m benchmarks <name>`` on an idle machine, never from tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def run_benchmark(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_segmentation_inference_benchmark_smoke():
    run_benchmark("bench_segmentation_inference", "--smoke")
    result = json.loads((RESULTS / "segmentation_inference_smoke.json").read_text())
    assert result["ratio"]["speedup"] > 0 and 0 <= result["figures"]["label_agreement_mean_structure_dice"] <= 1
    assert result["figures"]["tuned_windows"] > 0 and result["baseline"]["windows"] > 0


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
