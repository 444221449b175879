"""`ctfm embed`: patch-wise aggregation, and a folder never mixes settings."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from ctfm.analysis.patch_embeddings import patch_embeddings

from ._cli import CTFM, ctfm


@pytest.mark.slow
def test_embed_patch_aggregation_is_min_of_window_embeddings(weights, encoder, small_ct, tmp_path):
    from ctfm.transforms import preprocess

    ctfm("embed", "--weights", weights, "--aggregate", "min", "--window", 16, 64, 64, "--overlap", 0,
         "--output-dir", tmp_path / "e", small_ct[0])
    vector = np.load(tmp_path / "e" / "source.npy")
    patches, _ = patch_embeddings(encoder, preprocess(small_ct[0]), (16, 64, 64), (16, 64, 64), progress=False)
    np.testing.assert_allclose(vector, patches.min(0), rtol=1e-4, atol=1e-5)
    out = subprocess.run([*CTFM, "embed", "--weights", str(weights), "--output-dir", str(tmp_path / "e"), str(small_ct[0])],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "new --output-dir" in out.stderr  # never mixes settings in one folder


# --- Output safety: one folder, one set of weights and settings; a bad scan costs only itself ---------------
def _embed(*args) -> tuple[int, str]:
    """``ctfm embed`` in-process (the command's own code path); exit status and its stderr."""
    import contextlib
    import io

    from ctfm.cli.main import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = main(["embed", *map(str, args)])
    return status, err.getvalue()


@pytest.fixture(scope="module")
def other_weights(weights, tmp_path_factory):
    """The same encoder with one tensor changed: a valid CT-FM weights file with another sha256."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(weights / "model.safetensors"))
    first = sorted(k for k in tensors if tensors[k].is_floating_point())[0]
    tensors[first] = tensors[first] + 1e-3
    path = tmp_path_factory.mktemp("w2") / "other.safetensors"
    save_file(tensors, str(path))
    return path


@pytest.mark.slow
def test_embed_refuses_other_weights_and_other_settings_in_one_folder(weights, other_weights, small_ct, tmp_path):
    import json

    from ctfm.io import file_sha256

    out = tmp_path / "e"
    assert _embed("--weights", weights, "--output-dir", out, small_ct[0])[0] == 0
    recorded = json.loads((out / "embedding_settings.json").read_text())
    assert recorded["weights_sha256"] == file_sha256(weights / "model.safetensors")
    assert recorded["spacing"] == [3.0, 1.0, 1.0] and recorded["aggregate"] is None
    before = (out / "source.npy").read_bytes()

    status, err = _embed("--weights", other_weights, "--output-dir", out, small_ct[1])
    last = err.strip().splitlines()[-1]
    assert status == 1 and "weights_sha256" in last and "new --output-dir" in last
    assert recorded["weights_sha256"] in last and file_sha256(other_weights) in last  # both values named
    status, err = _embed("--weights", weights, "--aggregate", "mean", "--output-dir", out, small_ct[1])
    assert status == 1 and "aggregate: None there, 'mean' now" in err
    status, err = _embed("--weights", weights, "--aggregate", "mean", "--overwrite", "--output-dir", out, small_ct[1])
    assert status == 1 and "aggregate" in err  # --overwrite never mixes settings either
    assert sorted(p.name for p in out.glob("*.npy")) == ["source.npy"] and (out / "source.npy").read_bytes() == before


@pytest.mark.slow
def test_a_new_file_under_an_old_name_is_refused_then_recomputed_with_overwrite(weights, small_ct, tmp_path):
    import shutil

    from ctfm.analysis.retrieval import read_embeddings

    out, renamed = tmp_path / "e", tmp_path / "new" / "source.nii.gz"
    assert _embed("--weights", weights, "--output-dir", out, small_ct[0])[0] == 0
    old = np.load(out / "source.npy")
    assert _embed("--weights", weights, "--output-dir", out, small_ct[0])[0] == 0  # the same file: kept (resume)
    renamed.parent.mkdir()
    shutil.copy(small_ct[1], renamed)  # another scan with the first one's name
    status, err = _embed("--weights", weights, "--output-dir", out, renamed)
    assert status == 1 and f"is the embedding of {small_ct[0]}" in err and str(renamed) in err and "--overwrite" in err
    np.testing.assert_array_equal(np.load(out / "source.npy"), old)
    assert _embed("--weights", weights, "--overwrite", "--output-dir", out, renamed)[0] == 0
    new = np.load(out / "source.npy")
    assert not np.allclose(new, old)
    ids, vectors = read_embeddings(out)
    assert ids == ["source"] and np.array_equal(vectors[0], new)
    assert str(renamed) in (out / "embeddings.csv").read_text()


@pytest.mark.slow
def test_a_bad_scan_is_recorded_and_the_good_ones_are_embedded(weights, small_ct, tmp_path):
    import nibabel as nib

    bad = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.float32), np.eye(4)), bad)  # a 2-D slice
    out = tmp_path / "e"
    status, err = _embed("--weights", weights, "--output-dir", out, small_ct[0], bad, small_ct[1])
    assert status == 1
    last = err.strip().splitlines()[-1]
    assert str(bad) in last and "3-D" in last
    assert sorted(p.name for p in out.glob("*.npy")) == ["source.npy", "target.npy"]
    failures = (out / "failures.csv").read_text()
    assert "flat" in failures and str(bad) in failures and "3-D" in failures
    assert "flat" not in (out / "embeddings.csv").read_text()
    assert "exit status 1" in subprocess.run([*CTFM, "embed", "--help"], capture_output=True, text=True).stdout.lower()


def test_inputs_with_the_same_result_name_are_refused_before_any_work(tmp_path):
    import nibabel as nib

    for name in ("case1.nii", "case1.nii.gz"):
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), tmp_path / name)
    status, err = _embed("--weights", tmp_path / "not_read.safetensors", "--output-dir", tmp_path / "e",
                         tmp_path / "case1.nii", tmp_path / "case1.nii.gz")
    assert status == 1 and str(tmp_path / "case1.nii") in err and str(tmp_path / "case1.nii.gz") in err
    assert "both write the results named 'case1'" in err and not (tmp_path / "e").exists()
