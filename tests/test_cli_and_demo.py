"""The `ctfm` command as a user meets it, and the end-to-end demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ctfm.cli.main import COMMANDS, SUMMARIES, build_parser

CTFM = [sys.executable, "-m", "ctfm.cli.main"]


def test_every_command_has_help_with_examples():
    assert COMMANDS.keys() == SUMMARIES.keys()
    for name in COMMANDS:
        parser = build_parser(name)
        sub = next(a for a in parser._actions if a.dest == "command").choices[name]
        assert "Examples:" in sub.format_help() and f"ctfm {name}" in sub.format_help(), name


def test_top_level_help_lists_every_command(capsys):
    from ctfm.cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    assert all(name in shown for name in COMMANDS)


def test_info_json_lists_conventions_and_117_classes():
    out = subprocess.run([*CTFM, "info", "--json", "--list-classes"], capture_output=True, text=True, check=True)
    info = json.loads(out.stdout)
    assert info["encoder"]["init_filters"] == 32 and info["encoder"]["parameters"] == 77_760_992
    assert info["preprocessing"]["orientation"] == "SPL"
    classes = info["totalsegmentator_v2_classes"]
    assert len(classes) == 117 and classes["5"] == "liver" and classes["117"] == "costal_cartilages"


def test_bad_input_gives_one_line_error_not_a_traceback(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b" + b"not really gzip")
    weights = tmp_path / "missing_weights"
    out = subprocess.run(
        [*CTFM, "embed", "--weights", str(weights), "--output-dir", str(tmp_path / "e"), str(bad)],
        capture_output=True, text=True,
    )
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert str(weights) in out.stderr and "not found" in out.stderr


@pytest.mark.slow
def test_demo_runs_end_to_end_and_writes_what_it_prints(tmp_path, sample_ct):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    out = subprocess.run(
        [*CTFM, "demo", "--output-dir", str(tmp_path)], capture_output=True, text=True, env=env, timeout=900
    )
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = (tmp_path / "latest").resolve()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    for name, path in manifest["outputs"].items():
        assert Path(path).exists(), name
        assert path in out.stdout, f"the demo does not tell the user where {name} is"
    assert "RANDOM" in Path(manifest["outputs"]["weights"]).name
    assert "NOT CT-FM" in (Path(manifest["outputs"]["weights"]) / "README.md").read_text()
    embedding = np.load(manifest["outputs"]["embedding"])
    assert embedding.shape == (512,) and np.isfinite(embedding).all() and embedding.std() > 0
    for key in ("phantom_overlay_png", "real_ct_overlay_png"):
        png = np.asarray(Image.open(manifest["outputs"][key]).convert("RGB"))
        assert png.shape[0] > 300 and png.shape[1] > 900
        assert (np.abs(png[..., 0].astype(int) - png[..., 1]) > 40).any()  # coloured overlay, not just grey CT
    # A second run never touches the first.
    first = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("run_"))
    assert len(first) == 1
