"""The shared input checks (``ctfm.validation``): every bad kind of volume is refused with an error that
names the file and the problem, through each library entry point and the ``ctfm embed`` command; no
real sample CT and no phantom raises a false alarm. The rules are in docs/input_checks.md."""

from __future__ import annotations

import logging
import re
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from ctfm.data.phantoms import FIELDS_OF_VIEW, make_body_phantom, make_head_phantom, to_nifti, write_defective_inputs
from ctfm.transforms import ct_fm_transforms, preprocess
from ctfm.validation import CTInputError, check_ct_volume, load_volume, non_hu_reason

CTFM = [sys.executable, "-m", "ctfm.cli"]
SHAPE = (24, 32, 40)  # S, P, L voxels of the test phantom


def _write(path, array, phantom) -> str:
    nib.save(to_nifti(array, phantom.affine, phantom.orientation), str(path))
    return str(path)


@pytest.fixture(scope="module")
def defects(tmp_path_factory) -> dict:
    return write_defective_inputs(tmp_path_factory.mktemp("defects"), seed=0)


@pytest.fixture(scope="module")
def mr_float(defects) -> nib.Nifti1Image:
    """The generator's MR-like volume (0..4000, no air) stored as float, with the few negative values that
    resampling or bias correction leaves (noise around its dark air)."""
    mr = nib.load(str(defects["mr_like"]))
    noisy = mr.get_fdata(dtype=np.float32) + np.random.default_rng(0).normal(0, 30, mr.shape).astype(np.float32)
    return nib.Nifti1Image(noisy, mr.affine)


@pytest.fixture(scope="module")
def bad(defects, mr_float, tmp_path_factory) -> dict[str, tuple[str, str]]:
    """Bad kind -> (file, regex its error must match). Read-side defects come from the project's generator."""
    root = tmp_path_factory.mktemp("bad")
    ph = make_body_phantom(seed=3, shape=SHAPE, fov="thorax")
    hu = ph.image.astype(np.float32)
    nan_block, infinite = hu.copy(), hu.copy()
    nan_block[5:9, 10:14, 10:15] = np.nan  # 4 x 4 x 5 = 80 voxels
    infinite[0, 0, :3] = np.inf
    infinite[1, 1, :2] = -np.inf
    nib.save(mr_float, root / "mr_float.nii.gz")
    return {
        "nan_block": (_write(root / "nan_block.nii.gz", nan_block, ph), r"80 of [\d,]+ voxels are not finite.*80 NaN"),
        "all_nan": (_write(root / "all_nan.nii.gz", np.full_like(hu, np.nan), ph), r"voxels are not finite"),
        "inf": (_write(root / "inf.nii.gz", infinite, ph), r"5 of [\d,]+ voxels are not finite .*5 infinite"),
        "mr_float": (str(root / "mr_float.nii.gz"), r"not Hounsfield units"),
        "two_d": (str(defects["two_d"]), r"expected a 3-D volume"),
        "four_d": (str(defects["four_d"]), r"CT-FM takes one|expected a 3-D volume"),
        "truncated": (str(defects["truncated"]), r"cannot be read as an image.*truncated"),
    }


KINDS = ["nan_block", "all_nan", "inf", "mr_float", "two_d", "four_d", "truncated"]


@pytest.mark.parametrize("entry", ["preprocess", "load_volume"])
@pytest.mark.parametrize("kind", KINDS)
def test_bad_volume_is_refused_naming_file_and_problem(bad, kind, entry):
    path, problem = bad[kind]
    with pytest.raises(CTInputError) as err:
        preprocess(path) if entry == "preprocess" else load_volume(path, ct=True)
    assert path in str(err.value)
    assert re.search(problem, str(err.value), re.S), str(err.value)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from ctfm.networks import build_encoder
    from ctfm.weights import save_pretrained

    return save_pretrained(build_encoder(), tmp_path_factory.mktemp("w") / "ct_fm_RANDOM_INIT")


@pytest.mark.parametrize("kind", KINDS)
def test_embed_fails_with_a_last_line_naming_file_and_problem(bad, weights, kind, tmp_path, capsys):
    """The ``ctfm embed`` command's own code path, in-process (a subprocess per kind costs ~8 s of CPU)."""
    from ctfm.cli.main import main

    path, problem = bad[kind]
    assert main(["embed", "--weights", str(weights), "--output-dir", str(tmp_path / "e"), path]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert path in last and re.search(problem, last), last
    assert not list((tmp_path / "e").glob("*.npy"))  # nothing written for the bad scan


def test_embed_command_exits_non_zero_on_nan_voxels(bad, weights, tmp_path):
    """The issue's case as a user runs it: before, 512 NaNs were written with exit 0."""
    path, problem = bad["nan_block"]
    out = subprocess.run([*CTFM, "embed", "--weights", str(weights), "--output-dir", str(tmp_path / "e"), path],
                         capture_output=True, text=True)
    assert out.returncode == 1, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert path in last and re.search(problem, last), out.stderr
    assert "Traceback" not in out.stderr and not list((tmp_path / "e").glob("*.npy"))


def test_nonfinite_air_reads_them_as_air_and_says_so(bad, caplog):
    path, _ = bad["nan_block"]
    with caplog.at_level(logging.WARNING, logger="ctfm.validation"):
        image = preprocess(path, spacing=None, crop_foreground=False, nonfinite="air")
    assert torch.isfinite(image).all()
    assert int((image == 0).sum()) >= 80  # -1024 HU scales to 0
    assert any(path in r.getMessage() and "80 NaN" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="nonfinite must be one of"):
        preprocess(path, nonfinite="zero")


def test_all_nan_with_nonfinite_air_is_constant_not_a_scan(bad):
    path, _ = bad["all_nan"]
    with pytest.raises(CTInputError, match="constant"):
        load_volume(path, ct=True, nonfinite="air")


# --- No false alarm ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["abdomen_ct", "dicom_dir", "chest_nrrd", "brain_template"])
def test_every_real_sample_ct_passes(sample_ct, name):
    path = getattr(sample_ct, name)
    image = load_volume(path, ct=True)  # raises on any failed check
    assert non_hu_reason(image) is None


def test_every_phantom_passes():
    phantoms = [make_body_phantom(seed, fov=fov) for seed in range(6) for fov in FIELDS_OF_VIEW]
    phantoms += [make_head_phantom(seed, bleed=seed % 2 == 1) for seed in range(6)]
    for ph in phantoms:
        check_ct_volume(torch.as_tensor(ph.image[None]), f"phantom {ph.info}")


@pytest.mark.parametrize(
    "transform, reason",
    [
        (lambda mr: mr, "1 % of them are above"),  # raw scanner intensities
        (lambda mr: mr / mr.max() - 0.01, "within"),  # normalised to 0..1, a few negatives
        (lambda mr: (mr - mr.mean()) / mr.std(), "within"),  # z-scored
    ],
)
def test_mr_stored_as_float_is_not_hu(mr_float, transform, reason):
    mr = transform(mr_float.get_fdata(dtype=np.float32))
    assert mr.min() < 0 < mr.max()  # the old check (nothing below 0) let it through
    assert reason in (non_hu_reason(torch.as_tensor(mr[None])) or "")


def test_air_masked_to_zero_still_passes():
    """A CT whose air was set to 0 (an atlas, a skull-stripped head) is still HU: no air, soft-tissue values."""
    hu = make_head_phantom(seed=2).image.astype(np.float32)
    masked = np.where(hu < -200, 0.0, np.minimum(hu, 80.0))  # brain and CSF only, like the brain template
    assert non_hu_reason(torch.as_tensor(masked[None])) is None


# --- Slice spacing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("slice_mm, warned", [(5.0, False), (6.0, True), (50.0, True)])
def test_thick_slices_are_read_with_a_warning(slice_mm, warned, tmp_path, caplog):
    ph = make_body_phantom(seed=0, shape=(8, 32, 32), spacing=(slice_mm, 1.0, 1.0))
    path = str(tmp_path / "scan.nii.gz")
    nib.save(ph.to_nifti("image"), path)
    with caplog.at_level(logging.WARNING, logger="ctfm.validation"):
        image = preprocess(path, spacing=None)
    assert image.ndim == 4
    messages = [r.getMessage() for r in caplog.records if "thicker than 5 mm" in r.getMessage()]
    assert bool(messages) == warned
    if warned:
        assert path in messages[0] and f"{slice_mm:g} mm" in messages[0]
        caplog.clear()
        preprocess(path, spacing=None)  # an epoch later: the same file is not warned about again
        assert not [r for r in caplog.records if "thicker than 5 mm" in r.getMessage()]


# --- Label values ------------------------------------------------------------------------------------


@pytest.fixture()
def labelled(tmp_path):
    ph = make_body_phantom(seed=0, shape=SHAPE, fov="thorax")
    image = _write(tmp_path / "ct.nii.gz", ph.image, ph)
    return ph, image, tmp_path


def test_label_values_outside_the_class_map_name_file_and_values(labelled):
    ph, image, root = labelled
    label = ph.label.copy()
    label[0, 0, :3] = 200
    label[0, 1, :2] = 150
    path = _write(root / "ct_seg.nii.gz", label, ph)
    with pytest.raises(Exception) as err:
        ct_fm_transforms(label_key="label", num_classes=118)({"image": image, "label": path})
    text = str(err.value) + str(err.value.__cause__)
    assert path in text and "150, 200" in text and "5 voxel(s)" in text and "0..117" in text
    ct_fm_transforms(label_key="label")({"image": image, "label": path})  # no class map given: ids only


@pytest.mark.parametrize("value, shown", [(-1, "-1"), (2.5, "2.5")])
def test_labels_must_be_whole_non_negative_ids(labelled, value, shown):
    ph, image, root = labelled
    label = ph.label.astype(np.float32)
    label[2, 2, 2] = value
    path = _write(root / "bad_seg.nii.gz", label, ph)
    with pytest.raises(Exception) as err:
        ct_fm_transforms(label_key="label")({"image": image, "label": path})
    text = str(err.value) + str(err.value.__cause__)
    assert path in text and f": {shown}." in text


def test_label_with_nan_is_refused_even_with_nonfinite_air(labelled):
    ph, image, root = labelled
    label = ph.label.astype(np.float32)
    label[1, 1, 1] = np.nan
    path = _write(root / "nan_seg.nii.gz", label, ph)
    with pytest.raises(Exception) as err:
        ct_fm_transforms(label_key="label", nonfinite="air")({"image": image, "label": path})
    text = str(err.value) + str(err.value.__cause__)
    assert path in text and "1 NaN" in text


def test_reading_dicom_prints_no_nvimagecodec_lines(sample_ct):
    """MONAI's notice that a GPU JPEG decoder is absent is silenced: it buried the messages that matter."""
    import subprocess
    import sys

    code = f"from ctfm.validation import load_volume; print(tuple(load_volume({str(sample_ct.dicom_dir)!r}).shape))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "512, 512" in proc.stdout
    assert "nvImageCodec" not in proc.stderr + proc.stdout
