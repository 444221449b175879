"""A normal (non-editable) install works away from the checkout: resources ship in the package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``pip install --no-deps --target`` of this checkout: a built wheel, not a link to src/."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile", "--target", str(target), str(REPO)],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return target


def _run(installed: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    # The installed copy comes first on sys.path; the checkout is neither the cwd nor on PYTHONPATH.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CTFM_BUNDLES")}
    env["PYTHONPATH"] = str(installed)
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_installed_package_is_the_one_imported(installed, tmp_path):
    proc = _run(installed, tmp_path, "-c", "import ctfm; print(ctfm.__file__)")
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).is_relative_to(installed)


def test_help_and_info_run_from_the_installed_package(installed, tmp_path):
    help_ = _run(installed, tmp_path, "-m", "ctfm.cli", "--help")
    assert help_.returncode == 0, help_.stderr
    assert "embed" in help_.stdout
    info = _run(installed, tmp_path, "-m", "ctfm.cli", "info", "--list-classes")
    assert info.returncode == 0, info.stderr
    assert "liver" in info.stdout  # the class map is read from the package's resources


def test_shipped_resources_are_readable(installed, tmp_path):
    code = (
        "from ctfm.registry import resource\n"
        "for name in ('totalsegmentator_v2_total.json', 'idc/ct_fm_selection.sql', 'idc/paper_table_s5.csv',\n"
        "             'search_app/index.html', 'search_app/app.js', 'search_app/app.css'):\n"
        "    assert resource(name).read_text(), name\n"
        "print('ok')\n"
    )
    proc = _run(installed, tmp_path, "-c", code)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_a_tool_runs_on_the_sample_ct_from_the_installed_package(installed, tmp_path, sample_ct):
    weights = tmp_path / "weights"
    proc = _run(installed, tmp_path, "-c",
                "import torch; from ctfm.networks import build_encoder; from ctfm.weights import save_pretrained;"
                f"torch.manual_seed(0); save_pretrained(build_encoder(), {str(weights)!r})")
    assert proc.returncode == 0, proc.stderr
    proc = _run(installed, tmp_path, "-m", "ctfm.cli", "embed", str(sample_ct.brain_template), "--weights", "weights",
                "--output-dir", "emb")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert any((tmp_path / "emb").iterdir())
