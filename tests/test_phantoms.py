"""CT-like phantoms: HU per tissue, TotalSegmentator ids, world positions, SPL round trip through MONAI,
determinism, head bleeds, defective inputs, writers, datalists, overwrite protection and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from ctfm.data import phantoms as P
from ctfm.registry import totalsegmentator_classes, totalsegmentator_ids

IDS = totalsegmentator_ids()
CTFM = Path(sys.executable).parent / "ctfm"

# Expected mean HU per structure, written from the issue, not read from the module.
SOFT_TISSUE = ("liver", "spleen", "kidney_left", "kidney_right", "stomach", "small_bowel", "esophagus", "spinal_cord")
LUNG = ("lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right", "lung_middle_lobe_right",
        "lung_lower_lobe_right")
CONTRAST = ("aorta", "iliac_artery_left", "iliac_artery_right")
BONE = tuple(n for n in P.BODY_STRUCTURES if n.startswith(("vertebrae_", "rib_"))) + ("sternum",)  # C7..S1


@pytest.fixture(scope="module")
def body():
    # The whole trunk, at a spacing that keeps it small.
    return P.make_body_phantom(7, fov="thorax_abdomen", spacing=(2.5, 1.2, 1.2))


@pytest.fixture(scope="module")
def heads():
    """The same head of one seed without and with a bleed."""
    return {b: P.make_head_phantom(11, bleed=b, spacing=(2.0, 0.8, 0.8)) for b in (False, True)}


def _mean_hu(ph, name):
    mask = ph.label == IDS[name]
    assert mask.sum() >= 5, f"{name} is missing or tiny ({mask.sum()} voxels)"
    return float(ph.image[mask].mean())


def _world_centroid(img: nib.Nifti1Image, label_id: int) -> np.ndarray:
    idx = np.argwhere(np.asanyarray(img.dataobj) == label_id).mean(axis=0)
    return nib.affines.apply_affine(img.affine, idx)


# --- Body phantoms ----------------------------------------------------------------------------
def test_body_arrays_have_ct_dtypes_and_grid(body):
    assert body.image.dtype == np.int16 and body.label.dtype == np.uint8 and body.body.dtype == np.uint8
    assert body.image.shape == body.label.shape == body.body.shape
    assert body.label.max() <= 117
    np.testing.assert_allclose(body.spacing, (2.5, 1.2, 1.2))
    assert body.image.min() >= -1024


@pytest.mark.parametrize("names, lo, hi", [
    (SOFT_TISSUE, 30, 60),
    (LUNG, -900, -800),
    (CONTRAST, 150, 300),
    (BONE, 400, 1500),
    (("trachea",), -1024, -930),
    (("costal_cartilages",), 80, 250),
])
def test_body_tissues_have_ct_hounsfield_values(body, names, lo, hi):
    means = {n: _mean_hu(body, n) for n in names}
    assert all(lo <= m <= hi for m in means.values()), means


def test_body_air_fat_and_contrast_filled_heart(body):
    outside = body.body == 0
    assert -1010 <= body.image[outside].mean() <= -985  # air
    assert not body.label[outside].any()  # no structure outside the body outline
    # The outermost in-plane voxel ring of the body is subcutaneous fat.
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    ring = (body.body == 1) & ~ndimage.binary_erosion(body.body == 1, in_plane)
    assert -130 <= body.image[ring].mean() <= -70
    heart = body.image[body.label == IDS["heart"]]
    assert (heart < 90).mean() > 0.2 and (heart > 140).mean() > 0.1  # myocardium and contrast-filled chambers


def test_body_labels_are_totalsegmentator_ids_and_names(body):
    names = totalsegmentator_classes()
    assert body.classes == {int(i): names[int(i)] for i in np.unique(body.label) if i}
    assert set(body.classes.values()) == set(P.BODY_STRUCTURES)  # the whole trunk holds every structure
    required = {"heart", "liver", "spleen", "kidney_left", "kidney_right", "aorta", "vertebrae_T12", "vertebrae_L1",
                "rib_left_5", "rib_right_5", "sternum", *LUNG}
    assert required <= set(body.classes.values())
    assert set(body.classes.values()) <= set(P.BODY_STRUCTURES)


@pytest.mark.parametrize("orientation", ["RAS", "LPS", "PIR"])
def test_body_structures_sit_where_anatomy_puts_them(tmp_path, orientation):
    ph = P.make_body_phantom(5, fov="thorax_abdomen", spacing=(3.0, 1.5, 1.5), orientation=orientation)
    path = tmp_path / "label.nii.gz"
    nib.save(ph.to_nifti("label"), path)
    img = nib.load(path)
    assert nib.aff2axcodes(img.affine) == tuple(orientation)
    names = ("liver", "spleen", "heart", "aorta", "vertebrae_L1", "lung_upper_lobe_left")
    c = {n: _world_centroid(img, IDS[n]) for n in names}
    # RAS+ world: +x patient right, +y anterior, +z superior.
    assert c["spleen"][0] < c["liver"][0] - 20  # the liver on the patient's right, the spleen on the left
    assert c["heart"][2] > c["liver"][2] + 10 and c["lung_upper_lobe_left"][2] > c["heart"][2]
    assert c["vertebrae_L1"][1] < c["aorta"][1] - 3  # the spine is behind the aorta
    # The canonical affine says the same, whatever orientation the file is stored in.
    canonical = nib.affines.apply_affine(ph.affine, np.argwhere(ph.label == IDS["liver"]).mean(axis=0))
    np.testing.assert_allclose(c["liver"], canonical, atol=1e-6)


@pytest.mark.parametrize("orientation", ["RAS", "LPS", "SPL", "PIR", "ILP", "ASR"])
def test_monai_loadimage_and_orientation_spl_give_back_the_canonical_array(tmp_path, orientation):
    from monai.transforms import LoadImage, Orientation

    ph = P.make_body_phantom(3, shape=(20, 24, 32), orientation=orientation, fov="thorax")
    load, to_spl = LoadImage(ensure_channel_first=True, image_only=True), Orientation(axcodes="SPL")
    for which in ("image", "label"):
        path = tmp_path / f"{which}.nii.gz"
        nib.save(ph.to_nifti(which), path)
        stored = nib.load(path)
        if orientation != "SPL":  # really stored another way
            stored_array = np.asanyarray(stored.dataobj)
            assert stored.shape != ph.image.shape or not np.array_equal(stored_array, getattr(ph, which))
        out = to_spl(load(path))
        np.testing.assert_array_equal(np.asarray(out[0]), getattr(ph, which))
        np.testing.assert_allclose(out.affine.numpy(), ph.affine, atol=1e-5)


@pytest.mark.parametrize("orientation", ["LPS", "PIR"])
def test_itk_reader_reads_the_same_geometry(tmp_path, orientation):
    from monai.transforms import LoadImage, Orientation

    ph = P.make_body_phantom(3, shape=(20, 24, 32), orientation=orientation, fov="thorax")
    path = tmp_path / "label.nii.gz"
    nib.save(ph.to_nifti("label"), path)
    out = Orientation(axcodes="SPL")(LoadImage(reader="ITKReader", ensure_channel_first=True, image_only=True)(path))
    np.testing.assert_array_equal(np.asarray(out[0]), ph.label)
    np.testing.assert_allclose(out.affine.numpy(), ph.affine, atol=1e-4)


def test_structures_keep_their_physical_size_when_the_spacing_changes():
    fine = P.make_body_phantom(2, fov="abdomen", spacing=(2.0, 0.8, 0.8))
    coarse = P.make_body_phantom(2, fov="abdomen", spacing=(4.5, 1.5, 1.5))
    assert fine.image.shape != coarse.image.shape
    for name in ("liver", "stomach"):
        volumes = [(ph.label == IDS[name]).sum() * np.prod(ph.spacing) for ph in (fine, coarse)]
        assert abs(volumes[0] / volumes[1] - 1) < 0.1, (name, volumes)
        centres = [nib.affines.apply_affine(ph.affine, np.argwhere(ph.label == IDS[name]).mean(0))
                   for ph in (fine, coarse)]
        np.testing.assert_allclose(centres[0], centres[1], atol=2.0)
    assert fine.info["hu"] == coarse.info["hu"]  # a spacing override changes nothing else
    assert P.make_body_phantom(2, shape=(30, 40, 50)).image.shape == (30, 40, 50)


def test_same_seed_same_phantom_other_seed_other_phantom():
    a, b, c = P.make_body_phantom(4), P.make_body_phantom(4), P.make_body_phantom(5)
    for field in ("image", "label", "body", "affine"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.orientation == b.orientation and a.info == b.info
    assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)
    h1, h2 = P.make_head_phantom(4, bleed=True), P.make_head_phantom(4, bleed=True)
    np.testing.assert_array_equal(h1.image, h2.image)
    np.testing.assert_array_equal(h1.bleed, h2.bleed)


def test_seeds_vary_size_spacing_orientation_and_field_of_view():
    infos = [P.make_body_phantom(s, shape=(8, 8, 8)).info for s in range(10)]  # tiny grid: only the draws matter
    assert len({i["orientation"] for i in infos}) >= 3
    assert len({i["fov"] for i in infos}) >= 2
    assert len({i["scale"] for i in infos}) == 10
    assert all(0.2 <= i["scale"] <= 0.3 for i in infos)
    for s in range(4):
        ph = P.make_body_phantom(s, fov="abdomen")
        sp = ph.spacing
        assert 1.0 <= sp[0] <= 5.0 and 0.6 <= sp[1] <= 1.5 and sp[1] == pytest.approx(sp[2])
        assert 10 <= ph.info["noise_std"] <= 20


def test_bad_arguments_say_what_is_valid():
    with pytest.raises(ValueError, match="axis code.*LPS"):
        P.make_body_phantom(0, orientation="XYZ")
    with pytest.raises(ValueError, match="axis code"):
        P.make_body_phantom(0, orientation="LLS")
    with pytest.raises(ValueError, match="thorax"):
        P.make_body_phantom(0, fov="legs")
    with pytest.raises(ValueError, match="spacing must be 3 positive"):
        P.make_body_phantom(0, spacing=(1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match="seed"):
        P.write_body_phantoms("unused", seed=-1)
    with pytest.raises(ValueError, match="no 'body'"):
        P.make_head_phantom(0, shape=(8, 8, 8)).to_nifti("body")


# --- Head phantoms ----------------------------------------------------------------------------
def test_head_tissues(heads):
    normal = heads[False]
    brain = normal.label == IDS["brain"]
    assert 28 <= normal.image[brain].mean() <= 42
    assert 1000 <= normal.image[normal.label == IDS["skull"]].mean() <= 1500
    corners = normal.image[:, [0, -1]][:, :, [0, -1]]
    assert -1010 <= corners.mean() <= -985  # air around the head
    assert set(normal.classes.values()) == {"brain", "skull"}


def test_bleeds_are_hyperdense_and_inside_the_brain_and_normal_heads_have_none(heads):
    normal, bleeding = heads[False], heads[True]
    assert (normal.abnormal, bleeding.abnormal) == (0, 1)
    assert not normal.bleed.any()
    mask = bleeding.bleed == 1
    assert mask.sum() >= 10
    assert np.all(bleeding.label[mask] == IDS["brain"])
    assert 60 <= bleeding.image[mask].mean() <= 90
    # Hyperdense brain voxels: many with a bleed, hardly any (noise tails) without.
    hot = [int(((ph.label == IDS["brain"]) & (ph.image > 60)).sum()) for ph in (normal, bleeding)]
    assert hot[1] >= 0.5 * mask.sum() and hot[0] <= 0.01 * hot[1]
    assert np.percentile(normal.image[normal.label == IDS["brain"]], 99) < 60
    # A seed's normal and bleeding heads are the same head apart from the bleed.
    np.testing.assert_array_equal(normal.image[~mask], bleeding.image[~mask])


def test_every_bleeding_head_has_a_bleed_even_with_thick_slices():
    for seed in range(8):
        ph = P.make_head_phantom(seed, bleed=True, spacing=(5.0, 1.5, 1.5))
        mask = ph.bleed == 1
        assert mask.any() and ph.image[mask].mean() >= 60 and ph.info["bleed_kinds"][0] == "intraparenchymal"


# --- Writers, datalists, overwrite protection ---------------------------------------------------
def test_body_writer_and_datalist_load_with_monai(tmp_path):
    from monai.data import load_decathlon_datalist

    path = P.write_body_phantoms(tmp_path / "body", num=3, seed=1, spacing=(4.0, 1.5, 1.5))
    assert path == tmp_path / "body" / "datalist.json"
    raw = json.loads(path.read_text())
    assert not any(os.path.isabs(v) for e in raw["training"] + raw["validation"] for v in e.values())
    names = totalsegmentator_classes()
    assert all(names[int(i)] == n for i, n in raw["labels"].items() if i != "0")
    train = load_decathlon_datalist(str(path), is_segmentation=True, data_list_key="training")
    val = load_decathlon_datalist(str(path), is_segmentation=True, data_list_key="validation")
    assert (len(train), len(val)) == (2, 1)
    for entry in train + val:
        image, label, mask = (nib.load(entry[k]) for k in ("image", "label", "body_mask"))
        assert image.shape == label.shape == mask.shape
        np.testing.assert_allclose(image.affine, label.affine)
        assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
        assert set(np.unique(np.asanyarray(label.dataobj))) - {0} <= {int(i) for i in raw["labels"]}
        assert nib.aff2axcodes(image.affine) in {tuple(o) for o in P.ORIENTATIONS}


def test_head_writer_balances_every_list(tmp_path):
    from monai.data import load_decathlon_datalist

    path = P.write_head_phantoms(tmp_path / "head", num=12, seed=2, spacing=(4.0, 1.5, 1.5))
    seen = 0
    for key in ("training", "validation", "testing"):
        entries = load_decathlon_datalist(str(path), is_segmentation=False, data_list_key=key)
        labels = [e["label"] for e in entries]
        assert labels.count(0) == labels.count(1) >= 1, (key, labels)
        seen += len(entries)
        for e in entries:
            bleed = np.asanyarray(nib.load(e["bleed_mask"]).dataobj)
            assert bool(bleed.any()) == bool(e["label"])
            assert nib.load(e["image"]).shape == bleed.shape
    assert seen == 12


def test_same_seed_writes_the_same_bytes(tmp_path):
    a = P.write_body_phantoms(tmp_path / "a", num=2, seed=9, shape=(16, 20, 24)).parent
    b = P.write_body_phantoms(tmp_path / "b", num=2, seed=9, shape=(16, 20, 24)).parent
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 7
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_existing_different_files_are_never_silently_overwritten(tmp_path):
    out = tmp_path / "body"
    kwargs = dict(num=2, shape=(16, 20, 24))
    datalist = P.write_body_phantoms(out, seed=1, **kwargs)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}
    P.write_body_phantoms(out, seed=1, **kwargs)  # identical: fine, and nothing is rewritten
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()} == before
    with pytest.raises(FileExistsError, match=r"differ.*nothing was written.*overwrite=True"):
        P.write_body_phantoms(out, seed=2, **kwargs)
    assert {p: p.read_bytes() for p in before} == {p: v[0] for p, v in before.items()}
    P.write_body_phantoms(out, seed=2, overwrite=True, **kwargs)
    assert json.loads(datalist.read_text())["generator"]["seed"] == 2
    assert not list(out.rglob("*.partial"))
    assert not list(out.rglob(".*"))  # no temporary file of an atomic write is left behind


# --- Defective inputs -------------------------------------------------------------------------
def test_each_defective_input_has_its_defect(tmp_path):
    paths = P.write_defective_inputs(tmp_path / "defects", seed=0)
    assert set(paths) == set(P.DEFECTS)
    manifest = json.loads((tmp_path / "defects" / "defects.json").read_text())
    assert set(manifest["defects"]) == set(P.DEFECTS)

    good = nib.load(paths["label_other_grid_image"])
    assert good.get_fdata().ndim == 3
    truncated = paths["truncated"].read_bytes()
    assert paths["label_other_grid_image"].read_bytes().startswith(truncated)
    with pytest.raises(Exception):
        nib.load(paths["truncated"]).get_fdata()
    assert paths["empty"].stat().st_size == 0
    for name in ("empty", "not_nifti"):
        with pytest.raises(Exception):
            nib.load(paths[name]).get_fdata()

    def data(name):
        return np.asanyarray(nib.load(paths[name]).dataobj)

    assert data("two_d").ndim == 2
    assert data("four_d").ndim == 4 and data("four_d").shape[3] == 3
    assert np.ptp(data("constant")) == 0 and data("constant").ndim == 3
    mr = data("mr_like")
    assert mr.min() >= 0 and mr.max() <= 4000 and (mr > 1000).mean() > 0.1 and not (mr <= -500).any()
    u8 = data("uint8_0_255")
    assert u8.dtype == np.uint8 and len(np.unique(u8)) > 20
    label = nib.load(paths["label_other_grid"])
    assert label.shape != good.shape and not np.allclose(label.affine, good.affine)
    assert np.asanyarray(label.dataobj).max() > 0


# --- CLI --------------------------------------------------------------------------------------
def test_cli_writes_all_kinds_and_refuses_to_overwrite(tmp_path, capsys):
    from ctfm.cli.main import main

    out = tmp_path / "phantoms"
    assert main(["make-phantoms", "--kind", "all", "--num", "2", "--seed", "1", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out / "body" / "datalist.json") in printed and str(out / "head" / "datalist.json") in printed
    assert (out / "defects" / "defects.json").is_file()
    assert len(json.loads((out / "head" / "datalist.json").read_text())["training"]) >= 1

    # The installed command, as a user runs it: a different seed into the same folder is refused.
    args = ["make-phantoms", "--kind", "head", "--num", "2", "--seed", "2", "--output-dir", str(out)]
    result = subprocess.run([str(CTFM), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "--overwrite" in result.stderr and "Traceback" not in result.stderr
    assert json.loads((out / "head" / "datalist.json").read_text())["generator"]["seed"] == 1
    assert main([*args, "--overwrite"]) == 0
    assert json.loads((out / "head" / "datalist.json").read_text())["generator"]["seed"] == 2


def test_cli_help_has_runnable_examples(capsys):
    from ctfm.cli.main import main

    with pytest.raises(SystemExit):
        main(["make-phantoms", "--help"])
    text = capsys.readouterr().out
    assert "ctfm make-phantoms --kind body --num 4 --output-dir phantoms/" in text and "--overwrite" in text
