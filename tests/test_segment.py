"""`ctfm segment` and `ctfm statistics` end to end, the way a user runs them, with a tiny network.

The network is the bundle's, shrunk by bundle overrides (init_filters 8, 6 mm voxels, 32^3 windows) and
randomly initialised from a fixed seed: its labels are meaningless but deterministic, which is all that
these tests need (where the labels go, which are written, how they are stored).
"""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import LoadImage

from ctfm.cli.main import main
from ctfm.networks import build_segmentation_network
from ctfm.registry import label_groups, totalsegmentator_classes, totalsegmentator_ids

TINY = ["--override", "network_def#init_filters=8", "--override", "spacing=[6,6,6]",
        "--override", "patch_size=[32,32,32]"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A bundle model.pt of the tiny whole-body network (118 outputs, dsdepth 4), seed 0."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "model.pt"
    torch.save(build_segmentation_network(out_channels=118, init_filters=8).state_dict(), path)
    return path


def segment(*args) -> int:
    return main(["segment", *map(str, args), *TINY])


def load(path):
    return LoadImage(image_only=True)(str(path))


@pytest.fixture(scope="module")
def full_run(sample_ct, tiny_weights, tmp_path_factory):
    """Every structure of the real sample CT, every optional output."""
    out = tmp_path_factory.mktemp("full")
    assert segment("-i", sample_ct.abdomen_ct, "-o", out, "--weights", tiny_weights, "--statistics", "--preview") == 0
    return out


def test_the_label_map_lies_on_the_input_grid_with_its_names(sample_ct, full_run):
    image, seg = load(sample_ct.abdomen_ct), load(full_run / "abdomen_ct_seg.nii.gz")
    assert seg.shape == image.shape
    np.testing.assert_allclose(seg.affine, image.affine, atol=1e-3)
    assert nib.load(full_run / "abdomen_ct_seg.nii.gz").get_data_dtype() == np.uint8
    names = json.loads((full_run / "abdomen_ct_seg.json").read_text())
    present = {int(v) for v in np.unique(np.asarray(seg)) if v > 0}
    assert present and set(map(int, names["present"])) == present
    assert names["labels"]["5"] == "liver" and len(names["structures"]) == 117


def test_a_subset_writes_only_the_requested_structures_with_their_ids(sample_ct, tiny_weights, full_run, tmp_path,
                                                                      capsys):
    out = tmp_path / "subset"
    chosen = ["--structures", "liver", "spleen", "--groups", "vertebrae"]
    assert segment("-i", sample_ct.abdomen_ct, "-o", out, "--weights", tiny_weights, *chosen, "--per-structure") == 0
    progress = [line.split()[-1].split("/") for line in capsys.readouterr().out.splitlines() if "window batch" in line]
    assert len(progress) > 1 and progress[-1][0] == progress[-1][1]  # the count of batches was foreseen exactly
    wanted = {"liver", "spleen", *label_groups()["vertebrae"]}
    ids = {totalsegmentator_ids()[name] for name in wanted}
    full, subset = np.asarray(load(full_run / "abdomen_ct_seg.nii.gz")), np.asarray(load(out / "abdomen_ct_seg.nii.gz"))
    np.testing.assert_array_equal(subset, np.where(np.isin(full, list(ids)), full, 0))  # same ids, the rest dropped
    assert np.any(subset > 0)  # the seed-0 network labels some vertebrae: the comparison above is not vacuous
    masks = {p.name.removesuffix(".nii.gz"): p for p in (out / "abdomen_ct_structures").iterdir()}
    assert set(masks) == wanted
    for name in ("liver", "vertebrae_L1"):
        np.testing.assert_array_equal(np.asarray(load(masks[name])), subset == totalsegmentator_ids()[name])
    sidecar = json.loads((out / "abdomen_ct_seg.json").read_text())
    assert set(sidecar["structures"].values()) == wanted
    # probabilities need every class score: MONAI's full stitching, whose bf16 label map differs from the streamed
    # one at near-ties (tests/test_segmentation_bundle.py), so they are checked in a run of their own
    out = tmp_path / "probabilities"
    assert segment("-i", sample_ct.abdomen_ct, "-o", out, "--weights", tiny_weights, *chosen, "--probabilities") == 0
    sidecar = json.loads((out / "abdomen_ct_seg.json").read_text())
    assert set(np.unique(np.asarray(load(out / "abdomen_ct_seg.nii.gz")))) <= {0, *ids}
    probs = nib.load(out / "abdomen_ct_probabilities.nii.gz")
    assert probs.get_data_dtype() == np.uint8 and probs.shape == (*subset.shape, len(wanted))
    assert sidecar["probabilities"]["scale"] == "p = value / 255"
    assert sidecar["probabilities"]["channels"] == [sidecar["structures"][k] for k in sidecar["structures"]]
    assert np.asarray(probs.dataobj).max() > 0


def test_statistics_and_preview_of_the_run(full_run):
    seg = nib.load(full_run / "abdomen_ct_seg.nii.gz")
    stats = json.loads((full_run / "statistics.json").read_text())["abdomen_ct"]
    labels = np.asarray(seg.dataobj)
    voxel_ml = abs(np.linalg.det(seg.affine[:3, :3])) / 1000
    assert {s["id"] for s in stats.values()} == {int(v) for v in np.unique(labels) if v > 0}
    for entry in stats.values():
        assert entry["voxels"] == int((labels == entry["id"]).sum())
        assert entry["volume_ml"] == pytest.approx(entry["voxels"] * voxel_ml, rel=1e-3)
        assert entry["hu_min"] <= entry["hu_mean"] <= entry["hu_max"]
    from PIL import Image

    png = np.asarray(Image.open(full_run / "abdomen_ct_preview.png").convert("RGB")).astype(int)
    assert png.std() > 10  # not blank
    assert (np.abs(png[..., 0] - png[..., 1]) > 30).mean() > 0.01  # coloured labels over the grey CT


def test_ctfm_statistics_of_a_phantom_match_its_known_volumes_and_flag_a_cut_organ(tmp_path):
    """The phantom is stored in another orientation than its canonical SPL array; the truth is counted there."""
    from ctfm.data.phantoms import make_body_phantom

    phantom = make_body_phantom(seed=3, fov="abdomen", orientation="LPS")
    nib.save(phantom.to_nifti("image"), tmp_path / "ct.nii.gz")
    nib.save(phantom.to_nifti("label"), tmp_path / "seg.nii.gz")
    assert main(["statistics", "--image", str(tmp_path / "ct.nii.gz"), "--seg", str(tmp_path / "seg.nii.gz"),
                 "--output", str(tmp_path / "stats.json")]) == 0
    stats = json.loads((tmp_path / "stats.json").read_text())["ct"]
    voxel_ml = float(np.prod(phantom.spacing)) / 1000
    for name in ("liver", "spleen", "kidney_left", "stomach"):
        i = totalsegmentator_ids()[name]
        truth = phantom.label == i
        assert stats[name]["volume_ml"] == pytest.approx(truth.sum() * voxel_ml, rel=0.02), name
        assert stats[name]["hu_mean"] == pytest.approx(phantom.image[truth].mean(), abs=0.5), name
    assert not stats["spleen"]["incomplete"]

    # Cut the scan through the liver along S: the liver now touches the top face.
    liver_s = np.nonzero((phantom.label == totalsegmentator_ids()["liver"]).any(axis=(1, 2)))[0]
    cut = int(liver_s.mean())
    shift = np.eye(4)
    shift[0, 3] = cut  # voxel (0, 0, 0) of the cut array is voxel (cut, 0, 0) of the full one
    from ctfm.data.phantoms.geometry import to_nifti

    affine = phantom.affine @ shift
    nib.save(to_nifti(phantom.image[cut:], affine, "LPS"), tmp_path / "cut.nii.gz")
    nib.save(to_nifti(phantom.label[cut:], affine, "LPS"), tmp_path / "cut_seg.nii.gz")
    assert main(["statistics", "--image", str(tmp_path / "cut.nii.gz"), "--seg", str(tmp_path / "cut_seg.nii.gz"),
                 "--output", str(tmp_path / "cut.json")]) == 0
    cut_stats = json.loads((tmp_path / "cut.json").read_text())["cut"]
    assert cut_stats["liver"]["incomplete"] and cut_stats["liver"]["volume_ml"] < stats["liver"]["volume_ml"]


@pytest.fixture(scope="module")
def dicom_series(sample_ct, tmp_path_factory):
    """The real DICOM sample with the UIDs its anonymiser blanked put back (a SEG must reference them)."""
    import pydicom
    from pydicom.uid import generate_uid

    folder = tmp_path_factory.mktemp("dicom") / "abdomen_dicom"
    folder.mkdir()
    study, series = generate_uid(entropy_srcs=["study"]), generate_uid(entropy_srcs=["series"])
    for path in sorted(sample_ct.dicom_dir.iterdir()):
        ds = pydicom.dcmread(path)
        ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.save_as(folder / path.name, enforce_file_format=True)
    return folder


def test_dicom_series_gives_a_map_on_its_grid_and_a_dicom_seg_whose_frames_equal_it(dicom_series, tiny_weights,
                                                                                      tmp_path):
    pytest.importorskip("highdicom", reason="DICOM SEG output needs the dicom extra (highdicom)")
    import pydicom

    out = tmp_path / "out"
    assert segment("-i", dicom_series, "-o", out, "--weights", tiny_weights, "--output-type", "dicom_seg",
                   "--groups", "vertebrae") == 0
    image = LoadImage(reader="ITKReader", image_only=True)(str(dicom_series))
    seg = load(out / "abdomen_dicom_seg.nii.gz")
    assert seg.shape == image.shape
    np.testing.assert_allclose(seg.affine, image.affine, atol=1e-3)
    labels = np.asarray(seg)
    assert np.any(labels > 0)

    dcm = pydicom.dcmread(out / "abdomen_dicom_seg.dcm")
    assert dcm.Modality == "SEG"
    sources = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in dicom_series.iterdir()}
    assert {r.ReferencedSOPInstanceUID for s in dcm.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence} \
        == set(sources)
    names = {s.SegmentNumber: s.SegmentLabel for s in dcm.SegmentSequence}
    assert set(names.values()) == {totalsegmentator_classes()[int(i)] for i in np.unique(labels) if i > 0}
    slice_of = {float(np.asarray(image.affine)[2, 3] + k * np.asarray(image.affine)[2, 2]): k
                for k in range(labels.shape[2])}  # RAS z of each slice (axial series: z = LPS z)
    frames, seen = dcm.pixel_array, 0
    for frame, group in zip(frames, dcm.PerFrameFunctionalGroupsSequence):
        number = group.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        z = float(group.PlanePositionSequence[0].ImagePositionPatient[2])
        k = slice_of[min(slice_of, key=lambda v: abs(v - z))]
        expected = labels[:, :, k].T == totalsegmentator_ids()[names[number]]
        np.testing.assert_array_equal(frame.astype(bool), expected)
        seen += 1
    assert seen == len(frames) > 0


def test_an_anonymised_series_without_uids_is_refused_for_dicom_seg_before_any_work(sample_ct, tiny_weights,
                                                                                    tmp_path, capsys):
    pytest.importorskip("highdicom", reason="DICOM SEG output needs the dicom extra (highdicom)")
    out = tmp_path / "out"
    assert segment("-i", sample_ct.dicom_dir, "-o", out, "--weights", tiny_weights, "--output-type", "dicom_seg") == 1
    assert "SOPInstanceUID" in capsys.readouterr().err and not out.exists()


def test_bad_input_gets_a_clear_error_and_nothing_is_written(sample_ct, tiny_weights, tmp_path, capsys):
    from ctfm.data.phantoms.defects import write_defective_inputs
    from ctfm.weights import save_segmentation_pretrained

    out = tmp_path / "out"
    assert segment("-i", sample_ct.abdomen_ct, "-o", out, "--weights", tiny_weights, "--structures", "livr") == 1
    assert "unknown structure 'livr'; did you mean liver" in capsys.readouterr().err

    defects = write_defective_inputs(tmp_path / "defects")
    assert segment("-i", defects["mr_like"], "-o", out, "--weights", tiny_weights) == 1
    err = capsys.readouterr().err
    assert "mr_like" in err and "Hounsfield" in err

    other = tmp_path / "five_classes"  # a whole-body folder of another network
    save_segmentation_pretrained(build_segmentation_network(out_channels=5, init_filters=8), other)
    assert segment("-i", sample_ct.abdomen_ct, "-o", out, "--weights", other) == 1
    assert "out_channels=5 (the network: 118)" in capsys.readouterr().err
    assert not out.exists()

    # A complete earlier result is never replaced without --overwrite, and nothing new is added beside it.
    out.mkdir()
    (out / "abdomen_ct_seg.nii.gz").write_text("earlier result")
    assert segment("-i", sample_ct.abdomen_ct, "-o", out, "--weights", tiny_weights) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["abdomen_ct_seg.nii.gz"]
    assert (out / "abdomen_ct_seg.nii.gz").read_text() == "earlier result"


def test_convert_weights_writes_the_whole_body_folder_that_the_hub_mixin_and_segment_read(tiny_weights, tmp_path):
    hub = pytest.importorskip("huggingface_hub")
    from monai.networks.nets import SegResNetDS

    folder = tmp_path / "whole_body"
    assert main(["convert-weights", "--segmentation", "--input", str(tiny_weights), "--output", str(folder)]) == 0
    config = json.loads((folder / "config.json").read_text())
    assert config == {"blocks_down": [1, 2, 2, 4, 4], "dsdepth": 4, "init_filters": 8, "out_channels": 118}

    class HubSegResNetDS(SegResNetDS, hub.PyTorchModelHubMixin):
        """What lighter_zoo.SegResNet is: MONAI's SegResNetDS plus the hub mixin."""

    theirs = HubSegResNetDS.from_pretrained(str(folder))
    ours = torch.load(tiny_weights, weights_only=True)
    assert theirs.state_dict().keys() == ours.keys()
    assert all(torch.equal(theirs.state_dict()[k], v) for k, v in ours.items())

    from ctfm.weights import load_segmentation_weights

    model = load_segmentation_weights(build_segmentation_network(out_channels=118, init_filters=8), folder)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ours.items())
    with pytest.raises(ValueError, match="init_filters=8 \\(the network: 32\\)"):
        load_segmentation_weights(build_segmentation_network(out_channels=118), folder)


def test_without_a_bundles_folder_the_error_says_where_the_bundles_are(sample_ct, tiny_weights, tmp_path, monkeypatch,
                                                                        capsys):
    monkeypatch.delenv("CTFM_BUNDLES", raising=False)
    out = tmp_path / "out"
    assert main(["segment", "-i", str(sample_ct.abdomen_ct), "-o", str(out), "--weights", str(tiny_weights)]) == 1
    err = capsys.readouterr().err
    assert "bundles/ folder of a CT-FM checkout" in err and "--bundles-dir" in err and not out.exists()


def test_a_folder_of_scans_is_checked_whole_before_any_work_then_segmented_scan_by_scan(tiny_weights, tmp_path,
                                                                                         capsys):
    from ctfm.data.phantoms import make_body_phantom
    from ctfm.data.phantoms.defects import write_defective_inputs

    scans = tmp_path / "scans"
    scans.mkdir()
    for seed in (1, 2):
        nib.save(make_body_phantom(seed=seed).to_nifti("image"), scans / f"case{seed}.nii.gz")
    shutil.copy(write_defective_inputs(tmp_path / "defects")["mr_like"], scans / "zz_mr_like.nii.gz")
    out = tmp_path / "out"
    assert segment("-i", scans, "-o", out, "--weights", tiny_weights, "--statistics") == 1
    assert "zz_mr_like" in capsys.readouterr().err and not out.exists()  # the last scan stops the run before the first

    (scans / "zz_mr_like.nii.gz").unlink()
    assert segment("-i", scans, "-o", out, "--weights", tiny_weights, "--statistics") == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "case1_seg.json", "case1_seg.nii.gz", "case2_seg.json", "case2_seg.nii.gz", "statistics.json"]
    assert set(json.loads((out / "statistics.json").read_text())) == {"case1", "case2"}
