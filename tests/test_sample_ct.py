"""The real sample CT: fetch (pins, cache, errors), DICOM reading, orientation, datalist, CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import ctfm.data.sample_ct as sct
from ctfm.data.sample_ct import SOURCES, ChecksumError, DownloadError, SampleCT, default_cache_dir, fetch_sample_ct

SPL = "SPL"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _offline_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment in which pip cannot reach any index: no config files, index on a closed port."""
    env = dict(os.environ if base is None else base)
    for key in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX", "PIP_CONSTRAINT"):
        env.pop(key, None)
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        PIP_INDEX_URL=f"http://127.0.0.1:{_closed_port()}/simple",
        PIP_RETRIES="0",
        PIP_TIMEOUT="2",
    )
    return env


def _go_offline(monkeypatch) -> None:
    for key, value in _offline_env().items():
        monkeypatch.setenv(key, value)
    for key in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX", "PIP_CONSTRAINT"):
        monkeypatch.delenv(key, raising=False)


def _no_pip(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError(f"pip must not run here: {args}")

    monkeypatch.setattr(sct.subprocess, "run", refuse)


@pytest.fixture
def seeded_cache(sample_ct, tmp_path) -> Path:
    """A fresh cache folder holding copies of the three verified archives (as a user would place them)."""
    cache = tmp_path / "cache"
    (cache / "downloads").mkdir(parents=True)
    for source in SOURCES:
        shutil.copy2(sample_ct.root.parent / "downloads" / source.archive, cache / "downloads" / source.archive)
    return cache


@pytest.fixture(scope="module")
def dicom_pair(sample_ct):
    """The DICOM series (ITK) and its label map, both as read, channel first."""
    from monai.transforms import LoadImage

    image = LoadImage(reader="ITKReader", image_only=True, ensure_channel_first=True)(str(sample_ct.dicom_dir))
    label = LoadImage(image_only=True, ensure_channel_first=True)(str(sample_ct.dicom_label))
    return image, label


def _spl(x):
    from monai.transforms import Orientation

    return Orientation(axcodes=SPL)(x)


# --------------------------------------------------------------------------------------------- fetch
def test_fetch_writes_every_pinned_file(sample_ct):
    assert isinstance(sample_ct, SampleCT)
    members = [(m, source) for source in SOURCES for m in source.members]
    assert len(members) == 26  # 2 abdomen NIfTI + 20 DICOM + DICOM label + brain + chest CT + chest seg
    for member, _source in members:
        path = sample_ct.root / member.output
        assert _sha256(path) == member.sha256, path
    assert sorted(p.name for p in sample_ct.dicom_dir.iterdir()) == sorted(
        Path(m.output).name for m, _ in members if m.output.startswith("abdomen_dicom/")
    )
    for name, path in sample_ct.paths().items():
        assert path.is_absolute() and path.exists(), name
    assert sample_ct.chest_nrrd.read_bytes()[:4] == b"NRRD"
    assert b"left-posterior-superior" in sample_ct.chest_nrrd.read_bytes()[:1000]
    with pytest.raises(dataclasses.FrozenInstanceError):
        sample_ct.abdomen_ct = Path("x")  # type: ignore[misc]


def test_second_fetch_is_cached_and_runs_no_pip(sample_ct, monkeypatch):
    _no_pip(monkeypatch)
    before = {p: p.stat().st_mtime_ns for p in sample_ct.root.rglob("*") if p.is_file()}
    assert fetch_sample_ct() == sample_ct
    assert fetch_sample_ct(cache_dir=default_cache_dir()) == sample_ct
    after = {p: p.stat().st_mtime_ns for p in sample_ct.root.rglob("*") if p.is_file()}
    assert after == before  # nothing rewritten


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CTFM_CACHE", str(tmp_path / "env_cache"))
    assert default_cache_dir() == tmp_path / "env_cache"
    monkeypatch.delenv("CTFM_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "ctfm"


def test_placed_archives_work_offline_and_a_corrupt_archive_is_named(sample_ct, seeded_cache, monkeypatch):
    _no_pip(monkeypatch)
    wheel = seeded_cache / "downloads" / "slicerio-1.4.0-py3-none-any.whl"
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 0xFF
    wheel.write_bytes(bytes(data))
    bad = hashlib.sha256(bytes(data)).hexdigest()

    with pytest.raises(ChecksumError) as err:
        fetch_sample_ct(cache_dir=seeded_cache)
    msg = str(err.value)
    assert str(wheel) in msg and bad in msg and SOURCES[2].sha256 in msg
    assert "delete" in msg and err.value.path == wheel
    out = seeded_cache / "sample_ct"
    assert (out / "abdomen_ct.nii.gz").is_file()  # the sources before it were fetched from placed archives
    assert not (out / "chest_ct.nrrd").exists() and not (out / "dataset.json").exists()
    assert not list(out.glob(".ctfm-*"))

    wheel.unlink()  # the fix the message gives; the genuine archive is placed again
    shutil.copy2(sample_ct.root.parent / "downloads" / wheel.name, wheel)
    sample = fetch_sample_ct(cache_dir=seeded_cache)
    assert _sha256(sample.chest_nrrd) == SOURCES[2].members[0].sha256


def test_corrupt_output_is_reported_not_overwritten(seeded_cache, monkeypatch):
    _no_pip(monkeypatch)
    sample = fetch_sample_ct(cache_dir=seeded_cache)
    with open(sample.abdomen_label, "ab") as f:
        f.write(b"tampered")
    tampered = sample.abdomen_label.read_bytes()
    with pytest.raises(ChecksumError) as err:
        fetch_sample_ct(cache_dir=seeded_cache)
    msg = str(err.value)
    assert str(sample.abdomen_label) in msg and SOURCES[0].members[1].sha256 in msg
    assert hashlib.sha256(tampered).hexdigest() in msg and "delete" in msg
    assert sample.abdomen_label.read_bytes() == tampered  # left as it was

    sample.abdomen_label.unlink()
    assert _sha256(fetch_sample_ct(cache_dir=seeded_cache).abdomen_label) == SOURCES[0].members[1].sha256


def test_foreign_datalist_is_not_overwritten(seeded_cache, tmp_path, monkeypatch):
    _no_pip(monkeypatch)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "dataset.json").write_text('{"training": []}')
    with pytest.raises(sct.SampleDataError, match="dataset.json exists"):
        fetch_sample_ct(cache_dir=seeded_cache, output_dir=out)
    assert (out / "dataset.json").read_text() == '{"training": []}'
    assert [p.name for p in out.iterdir()] == ["dataset.json"]  # nothing added to someone else's folder


@pytest.mark.timeout(90)
def test_offline_fails_fast_with_a_clear_error(tmp_path, monkeypatch):
    _go_offline(monkeypatch)
    with pytest.raises(DownloadError) as err:
        fetch_sample_ct(cache_dir=tmp_path / "cache")
    msg = str(err.value)
    assert "totalsegmentator==2.18.0" in msg and "could not be reached" in msg
    assert "totalsegmentator-2.18.0.tar.gz" in msg and SOURCES[0].sha256 in msg  # what to place by hand
    assert str(tmp_path / "cache" / "downloads") in msg and "Fix:" in msg
    assert "No matching distribution" in msg or "Connection refused" in msg  # pip's own words
    assert list((tmp_path / "cache" / "downloads").iterdir()) == []  # no half archive, no staging folder
    assert [p.name for p in (tmp_path / "cache" / "sample_ct").iterdir()] == []


def test_interrupted_write_leaves_nothing_that_looks_valid(seeded_cache, monkeypatch):
    _no_pip(monkeypatch)
    out = seeded_cache / "sample_ct"
    out.mkdir()
    stale = out / ".ctfm-old.part"
    stale.write_bytes(b"half")
    os.utime(stale, (1, 1))

    class Killed(BaseException):
        pass

    def die(fd):
        raise Killed

    monkeypatch.setattr(sct.os, "fsync", die)  # all bytes written to the temporary, not yet renamed
    with pytest.raises(Killed):
        fetch_sample_ct(cache_dir=seeded_cache)
    assert not (out / "abdomen_ct.nii.gz").exists()
    assert [p.name for p in out.iterdir() if not p.name.startswith(".ctfm-")] == []
    monkeypatch.undo()
    _no_pip(monkeypatch)
    sample = fetch_sample_ct(cache_dir=seeded_cache)
    assert _sha256(sample.abdomen_ct) == SOURCES[0].members[0].sha256
    assert not stale.exists() and not list(out.glob(".ctfm-*"))


# --------------------------------------------------------------------------------------------- reading
def test_dicom_series_reads_with_itk_as_hu(sample_ct, dicom_pair):
    import pydicom

    image, _ = dicom_pair
    assert tuple(image.shape) == (1, 512, 512, 20)
    np.testing.assert_allclose(image.pixdim[:3].numpy(), [0.9765625, 0.9765625, 2.0], atol=1e-4)
    arr = image[0].numpy()
    assert arr.min() == -1024.0  # air outside the field of view, after RescaleIntercept -1024
    assert arr.max() > 1000.0  # bone
    body = (arr > -500).mean()
    assert 0.15 < body < 0.8
    soft = arr[(arr > -200) & (arr < 300)]
    assert -50 < np.median(soft) < 100  # soft tissue around 0-60 HU, not raw stored values

    # the world geometry matches the DICOM headers (ITK's LPS -> MONAI's RAS: x and y negated)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sample_ct.dicom_dir.iterdir()]
    z = sorted(float(h.ImagePositionPatient[2]) for h in headers)
    affine = image.affine.numpy()
    np.testing.assert_allclose(z, affine[2, 3] + affine[2, 2] * np.arange(20), atol=1e-3)
    x0, y0 = (float(v) for v in headers[0].ImagePositionPatient[:2])
    np.testing.assert_allclose(affine[:2, 3], [-x0, -y0], atol=1e-3)


def test_dicom_label_aligns_by_world_coordinates_not_voxel_order(dicom_pair):
    image, label = dicom_pair
    assert image.shape == label.shape
    assert not np.allclose(image.affine.numpy(), label.affine.numpy())  # the label's voxel order is flipped
    img, lab = _spl(image), _spl(label)
    assert tuple(img.shape) == (1, 20, 512, 512)
    np.testing.assert_allclose(img.affine.numpy(), lab.affine.numpy(), atol=1e-4)
    inside = lab[0] > 0
    aligned = (img[0][inside] > -500).float().mean().item()
    naive = (image[0][label[0] > 0] > -500).float().mean().item()  # voxel order, ignoring the affine
    assert aligned > 0.95
    assert naive < aligned - 0.1
    ids = set(torch.unique(lab).int().tolist())
    assert len(ids) == 32 and ids <= set(range(118))  # background + 31 TotalSegmentator v2 ids


def test_abdomen_label_is_anatomically_placed(sample_ct):
    from monai.transforms import LoadImage

    from ctfm.registry import totalsegmentator_classes, totalsegmentator_ids

    load = LoadImage(image_only=True, ensure_channel_first=True)
    ct, lab = _spl(load(str(sample_ct.abdomen_ct))), _spl(load(str(sample_ct.abdomen_label)))
    assert tuple(ct.shape) == (1, 112, 101, 122)
    np.testing.assert_allclose(ct.affine.numpy(), lab.affine.numpy(), atol=1e-4)
    ids = set(torch.unique(lab).int().tolist()) - {0}
    assert len(ids) == 61 and ids <= set(totalsegmentator_classes())
    names = totalsegmentator_ids()
    ct, lab = ct[0].numpy(), lab[0].numpy()

    def centre(name):
        return np.argwhere(lab == names[name]).mean(0)  # (S, P, L) voxel centre

    def hu(name):
        return float(np.median(ct[lab == names[name]]))

    assert 20 < hu("liver") < 120 and hu("vertebrae_L1") > 120 and hu("femur_left") > 150
    assert centre("liver")[2] < centre("spleen")[2]  # patient right before left along L
    assert centre("liver")[0] > centre("urinary_bladder")[0] > centre("femur_left")[0]  # toward Superior
    assert centre("vertebrae_L1")[1] > centre("urinary_bladder")[1]  # spine is posterior


@pytest.mark.parametrize("reader", ["ITKReader", "NrrdReader"])
def test_lps_nrrd_and_ras_nifti_of_the_same_voxels_agree_in_spl(sample_ct, tmp_path, reader):
    import nrrd
    from monai.transforms import LoadImage

    data, header = nrrd.read(str(sample_ct.chest_nrrd))
    assert header["space"] == "left-posterior-superior"
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(header["space directions"], dtype=float).T
    lps[:3, 3] = header["space origin"]
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps

    # The same voxels stored another way: axis 0 flipped, then axes permuted (a, b, c) <- (k, i', j).
    n0 = data.shape[0]
    stored = np.ascontiguousarray(data[::-1].transpose(2, 0, 1))
    index_map = np.array([[0, -1, 0, n0 - 1], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    nifti = tmp_path / "chest_ras.nii.gz"
    nib.save(nib.Nifti1Image(stored, ras @ index_map), str(nifti))
    wrong = tmp_path / "chest_lps_as_ras.nii.gz"  # the classic mistake: LPS matrix written as if RAS
    nib.save(nib.Nifti1Image(data, lps), str(wrong))

    from_nrrd = _spl(LoadImage(reader=reader, image_only=True, ensure_channel_first=True)(str(sample_ct.chest_nrrd)))
    load_nii = LoadImage(reader="NibabelReader", image_only=True, ensure_channel_first=True)
    from_nifti, from_wrong = _spl(load_nii(str(nifti))), _spl(load_nii(str(wrong)))

    assert tuple(from_nrrd.shape) == tuple(from_nifti.shape) == (1, 34, 128, 128)
    assert torch.equal(from_nrrd.as_tensor(), from_nifti.as_tensor())
    np.testing.assert_allclose(from_nrrd.affine.numpy(), from_nifti.affine.numpy(), atol=1e-4)
    assert not torch.equal(from_nrrd.as_tensor(), from_wrong.as_tensor())  # the check can fail

    # and SPL means anatomy: the right lung (segment 5) lies before the left lung (6) along L
    seg = _spl(LoadImage(reader=reader, image_only=True, ensure_channel_first=True)(str(sample_ct.chest_seg)))[0]
    right, left = (np.argwhere(seg.numpy() == v)[:, 2].mean() for v in (5, 6))
    assert right + 20 < left
    assert float(np.median(from_nrrd[0].numpy()[seg.numpy() == 5])) < -700  # lung is air-filled


# --------------------------------------------------------------------------------------------- datalist
def test_datalist_loads_with_monai(sample_ct):
    from monai.data import load_decathlon_datalist
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

    root = sample_ct.root
    training = load_decathlon_datalist(str(sample_ct.datalist), True, "training", base_dir=str(root))
    validation = load_decathlon_datalist(str(sample_ct.datalist), True, "validation", base_dir=str(root))
    testing = load_decathlon_datalist(str(sample_ct.datalist), False, "testing", base_dir=str(root))
    assert training == [{"image": str(sample_ct.abdomen_ct), "label": str(sample_ct.abdomen_label)}]
    assert validation == [{"image": str(sample_ct.dicom_dir), "label": str(sample_ct.dicom_label)}]
    assert testing == [{"image": str(sample_ct.chest_nrrd)}]

    doc = json.loads(sample_ct.datalist.read_text())
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != "dataset.json"}
    on_disk = {p for p in on_disk if not Path(p).name.startswith(".ctfm-")}
    assert set(doc["files"]) == on_disk and len(on_disk) == 26
    for rel, info in doc["files"].items():
        assert info["sha256"] == _sha256(root / rel)
        assert info["package"] in {"totalsegmentator", "slicerio"} and info["version"] and info["what"]
        assert info["licence"] == {"totalsegmentator": "Apache-2.0", "slicerio": "MIT"}[info["package"]]
    assert doc["labels"]["5"] == "liver" and len(doc["labels"]) == 118

    keys = ["image", "label"]
    load = Compose([LoadImaged(keys), EnsureChannelFirstd(keys), Orientationd(keys, SPL)])
    item = load(training[0])
    assert item["image"].shape == item["label"].shape == (1, 112, 101, 122)


# --------------------------------------------------------------------------------------------- CLI
def _ctfm() -> list[str]:
    script = Path(sys.executable).parent / "ctfm"
    return [str(script)] if script.exists() else [sys.executable, "-m", "ctfm.cli.main"]


def test_cli_writes_outputs_and_prints_paths(seeded_cache, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [*_ctfm(), "fetch-sample-data", "--cache-dir", str(seeded_cache), "--output-dir", str(out)],
        capture_output=True, text=True, env=_offline_env(), timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    printed = dict(line.split(": ", 1) for line in proc.stdout.strip().splitlines())
    assert printed["datalist"] == str(out / "dataset.json") and printed["dicom_dir"] == str(out / "abdomen_dicom")
    assert set(printed) == {f.name for f in dataclasses.fields(SampleCT)}
    assert all(Path(p).exists() for p in printed.values())
    assert _sha256(out / "chest_ct.nrrd") == SOURCES[2].members[0].sha256
    assert not (seeded_cache / "sample_ct").exists()  # --output-dir was honoured


def test_cli_offline_error_is_one_clear_message(tmp_path):
    proc = subprocess.run(
        [*_ctfm(), "fetch-sample-data", "--cache-dir", str(tmp_path / "c")],
        capture_output=True, text=True, env=_offline_env(), timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "ctfm fetch-sample-data: error: could not download totalsegmentator==2.18.0" in proc.stderr
    assert "place the file totalsegmentator-2.18.0.tar.gz" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
