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

from ctfm.cli.main import COMMANDS, PATH_OPTIONS, SUMMARIES, build_parser

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
    assert info["versions"]["itk-io"] and info["versions"]["monai"]  # the core reads volumes with ITK's I/O only
    assert info["extras"] == {"idc": True, "retrieval": True, "registration": True, "dicom": True}  # make installs every extra


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


def test_every_option_is_classified_as_a_path_or_not():
    """A new file or folder option must join PATH_OPTIONS, or its relative value would not be made absolute."""
    not_paths = {"help", "version", "command", "prefix", "device", "idc_version", "metadata_idc_version", "gcp_project",
                 "key", "run_name", "name_a", "name_b", "id_column", "label_column", "structure", "host",
                 "structures", "groups", "override", "set"}
    for name in COMMANDS:
        sub = next(a for a in build_parser(name)._actions if a.dest == "command").choices[name]
        for action in sub._actions:
            text = action.type in (None, str, Path) and not action.choices and action.nargs != 0  # flags: nargs 0
            assert action.dest in PATH_OPTIONS or action.dest in not_paths or not text, (name, action.dest)


def test_relative_paths_mean_the_working_directory_they_are_typed_in(tmp_path):
    """`ctfm embed` from a folder other than the data's: relative --weights, --datalist, --dataset-dir, --output-dir."""
    from ctfm.data.phantoms import write_body_phantoms
    from ctfm.networks import build_encoder
    from ctfm.weights import save_pretrained

    data, work = tmp_path / "data", tmp_path / "work"
    datalist = write_body_phantoms(data / "body", num=2, seed=0)
    save_pretrained(build_encoder(), data / "weights")  # the CT-FM topology: embed refuses any other
    (data / "lists").mkdir()
    datalist.rename(data / "lists" / "phantoms.json")  # elsewhere than its images: --dataset-dir is needed
    work.mkdir()
    out = subprocess.run(
        [*CTFM, "embed", "--weights", "../data/weights", "--datalist", "../data/lists/phantoms.json",
         "--dataset-dir", "../data/body", "--output-dir", "embeddings"],
        cwd=work, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    index = work / "embeddings" / "embeddings.csv"
    assert index.is_file() and str(index) in out.stdout  # where the user meant, and said in full
    assert len(list((work / "embeddings").glob("*.npy"))) == 2  # one per scan of the datalist
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "work"]  # nothing written anywhere else


def test_a_missing_bundles_folder_is_named_before_any_work(tmp_path, monkeypatch, capsys):
    from ctfm.cli.main import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CTFM_BUNDLES")
    assert main(["demo", "--output-dir", "x"]) == 1
    assert "set CTFM_BUNDLES to the bundles/ folder" in capsys.readouterr().err
    assert main(["demo", "--bundles-dir", "nowhere"]) == 1
    assert f"{tmp_path / 'nowhere'} (from --bundles-dir) holds no CT-FM bundles" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no run folder was started


@pytest.mark.slow
def test_demo_runs_end_to_end_from_another_folder_and_writes_what_it_prints(tmp_path, sample_ct):
    """As `make demo` but from a folder other than the checkout: the relative --output-dir means that folder,
    although the bundles run in their own folders."""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}  # CTFM_BUNDLES: set by conftest.py (or make) to this checkout
    out = subprocess.run(
        [*CTFM, "demo", "--output-dir", "demo_output"], cwd=tmp_path, capture_output=True, text=True, env=env,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["demo_output"]
    output_dir = tmp_path / "demo_output"
    run_dir = (output_dir / "latest").resolve()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    for name, path in manifest["outputs"].items():
        assert Path(path).exists(), name
        assert path in out.stdout, f"the demo does not tell the user where {name} is"
        if name != "sample_ct_folder":  # the one output in the download cache
            assert Path(path).is_relative_to(run_dir), f"{name} is not in the run folder: {path}"
    assert "RANDOM" in Path(manifest["outputs"]["weights"]).name
    assert "NOT CT-FM" in (Path(manifest["outputs"]["weights"]) / "README.md").read_text()
    embedding = np.load(manifest["outputs"]["embedding"])
    assert embedding.shape == (512,) and np.isfinite(embedding).all() and embedding.std() > 0
    for key in ("phantom_overlay_png", "real_ct_overlay_png"):
        png = np.asarray(Image.open(manifest["outputs"][key]).convert("RGB"))
        assert png.shape[0] > 300 and png.shape[1] > 900
        assert (np.abs(png[..., 0].astype(int) - png[..., 1]) > 40).any()  # coloured overlay, not just grey CT
    # A second run never touches the first.
    first = sorted(p.name for p in output_dir.iterdir() if p.name.startswith("run_"))
    assert len(first) == 1
