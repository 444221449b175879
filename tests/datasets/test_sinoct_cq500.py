"""ctfm convert-sinoct / convert-cq500 on small look-alike trees of the published layouts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ctfm.data.phantoms import make_head_phantom
from ctfm.cli import convert_cq500, convert_sinoct
from ctfm.datasets import cq500, sinoct
from tool_runner import run_tool


# --- SinoCT -------------------------------------------------------------------------------------
@pytest.fixture
def sinoct_tree(tmp_path) -> tuple[Path, dict[str, int]]:
    """labels.csv with one-hot labels and one NIfTI per patient folder (some under nrrd/, some not)."""
    root = tmp_path / "SinoCT"
    labels = {f"series_{i}": int(i % 5 < 3) for i in range(40)}  # 24 abnormal, 16 normal
    for i, (pid, label) in enumerate(labels.items()):
        folder = root / pid / ("nrrd" if i % 2 else "")
        folder.mkdir(parents=True)
        image = nib.Nifti1Image(np.full((4, 4, 4), -1000, np.int16), np.eye(4))
        nib.save(image, folder / ("scan.nii.gz" if i % 2 else f"{pid}.nii.gz"))
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["patient_id", "label"])
        writer.writerows([pid, "0,1" if y else "1,0"] for pid, y in labels.items())
    return root, labels


def test_sinoct_default_split_is_the_authors(sinoct_tree, tmp_path):
    """Sorted folders, random.seed(0), random.shuffle, cut at int(0.8 n) and int(0.9 n): written out by hand here."""
    import random

    root, labels = sinoct_tree
    assert run_tool(convert_sinoct, ["--sinoct-dir", str(root), "--output", str(tmp_path / "a.json")]) == 0
    written = json.loads((tmp_path / "a.json").read_text())
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    random.seed(0)
    random.shuffle(folders)
    assert [e["id"] for e in written["training"]] == folders[:32]
    assert [e["id"] for e in written["validation"]] == folders[32:36]
    assert [e["id"] for e in written["testing"]] == folders[36:]
    assert written["converter"]["split"] == "authors"
    (root / "stray_folder").mkdir()  # a folder without a label would shift the authors' lists: refused
    with pytest.raises(ValueError, match="stray_folder"):
        sinoct.convert_sinoct(root, tmp_path / "stray.json")


def test_sinoct_stratified_split_keeps_the_class_balance(sinoct_tree, tmp_path):
    root, labels = sinoct_tree
    args = ["--sinoct-dir", str(root), "--output", str(tmp_path / "a.json"), "--split", "stratified"]
    assert run_tool(convert_sinoct, args) == 0
    first = json.loads((tmp_path / "a.json").read_text())
    sizes = {k: len(first[k]) for k in ("training", "validation", "testing")}
    assert sizes == {"training": 32, "validation": 4, "testing": 4}
    for name in ("validation", "testing"):  # each class split 8:1:1 on its own
        assert sum(e["label"] for e in first[name]) == 2
    entries = [e for k in sizes for e in first[k]]
    assert sorted(e["id"] for e in entries) == sorted(labels)  # every patient once
    assert all(e["label"] == labels[e["id"]] for e in entries)
    assert all((root / e["image"]).is_file() for e in entries)
    # The same seed gives the same split; another seed another one.
    sinoct.convert_sinoct(root, tmp_path / "b.json", seed=0, split="stratified")
    sinoct.convert_sinoct(root, tmp_path / "c.json", seed=1, split="stratified")
    assert json.loads((tmp_path / "b.json").read_text())["testing"] == first["testing"]
    assert json.loads((tmp_path / "c.json").read_text())["testing"] != first["testing"]
    # The bundle reads it as it is.
    from bundle_runner import use_bundle_scripts

    use_bundle_scripts(Path(__file__).resolve().parents[2] / "bundles" / "ct_fm_triage")
    from scripts.data import load_triage_datalist

    items = load_triage_datalist(tmp_path / "a.json", root, "validation")
    assert [i["label"] for i in items] == [e["label"] for e in first["validation"]]


def test_sinoct_problems_fail_clearly(sinoct_tree, tmp_path):
    root, _ = sinoct_tree
    out = tmp_path / "d.json"
    out.write_text("{}")
    with pytest.raises(FileExistsError, match="already exists"):
        sinoct.convert_sinoct(root, out)
    (root / "series_3" / "nrrd" / "scan.nii.gz").unlink()
    with pytest.raises(ValueError, match="series_3 holds no NIfTI/NRRD file or DICOM series"):
        sinoct.convert_sinoct(root, tmp_path / "e.json")
    with open(root / "labels.csv", "a") as f:
        f.write("series_99,maybe\n")
    with pytest.raises(ValueError, match="series_99: label 'maybe'"):
        sinoct.convert_sinoct(root, tmp_path / "f.json")


# --- CQ500 --------------------------------------------------------------------------------------
FINDINGS = ["ICH", "IPH", "IVH", "SDH", "EDH", "SAH", "BleedLocation-Left", "BleedLocation-Right", "ChronicBleed",
            "Fracture", "CalvarialFracture", "OtherFracture", "MassEffect", "MidlineShift"]


def write_dicom_series(volume_spl: np.ndarray, spacing, folder: Path, description: str, kernel: str = "STANDARD",
                       contrast: str = "") -> None:
    """A CT series of an SPL array (axis 0 toward Superior): one axial slice per file, stored as HU + 1024."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    for k, plane in enumerate(volume_spl):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "CT", "cq500", study, series
        ds.FrameOfReferenceUID, ds.SeriesDescription, ds.ConvolutionKernel = frame, description, kernel
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        if contrast:
            ds.ContrastBolusAgent = contrast
        ds.InstanceNumber, ds.SliceThickness = k + 1, spacing[0]
        ds.PixelSpacing = [spacing[1], spacing[2]]  # rows run toward Posterior, columns toward patient Left
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, k * spacing[0]]  # LPS: +z is Superior
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = (plane.astype(np.int32) + 1024).astype(np.uint16).tobytes()
        ds.save_as(folder / f"{k:04d}.dcm", enforce_file_format=True)


@pytest.fixture(scope="module")
def cq500_tree(tmp_path_factory) -> Path:
    """Three studies in CQ500's layout, each with several series, and a reads.csv of three readers."""
    root = tmp_path_factory.mktemp("CQ500")
    reads = {  # study -> {reader: [findings]}
        0: {},
        1: {"R1": ["ICH", "IPH"], "R2": ["ICH", "IPH"], "R3": ["ICH"]},
        2: {"R2": ["Fracture"]},  # one reader only: abnormal by "any", normal by "majority"
    }
    for n, marks in reads.items():
        study = root / f"CQ500CT{n} CQ500CT{n}" / "Unknown Study"
        thick = make_head_phantom(seed=n, bleed=n == 1, scale=0.5, spacing=(5.0, 2.0, 2.0)).image
        thin = make_head_phantom(seed=n, bleed=n == 1, scale=0.5, spacing=(2.5, 2.0, 2.0)).image
        write_dicom_series(thin, (2.5, 2.0, 2.0), study / "CT PLAIN THIN", "CT PLAIN THIN")
        write_dicom_series(thick, (5.0, 2.0, 2.0), study / "CT Plain", "CT Plain")
        write_dicom_series(thick, (5.0, 2.0, 2.0), study / "CT BONE", "CT BONE", kernel="BONE")
        write_dicom_series(thick, (5.0, 2.0, 2.0), study / "CT 5mm POST CONTRAST", "CT 5mm POST CONTRAST",
                           contrast="IOHEXOL")
        write_dicom_series(thick[:3], (5.0, 2.0, 2.0), study / "CT 4cm", "CT 4cm")
    header = ["name", "Category"] + [f"{r}:{f}" for r in ("R1", "R2", "R3") for f in FINDINGS]
    with open(root / "reads.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for n, marks in reads.items():
            writer.writerow([f"CQ500-CT-{n}", "B1"] + [int(fd in marks.get(r, [])) for r in ("R1", "R2", "R3")
                                                       for fd in FINDINGS])
        writer.writerow(["CQ500-CT-7", "B2"] + [0] * (len(header) - 2))  # in reads.csv, not on disk
    return root


def test_cq500_labels_follow_the_any_finding_rule_and_series_selection(cq500_tree, tmp_path):
    assert run_tool(convert_cq500, ["--cq500-dir", str(cq500_tree), "--output", str(tmp_path / "any.json")]) == 0
    datalist = json.loads((tmp_path / "any.json").read_text())
    by_id = {e["id"]: e for e in datalist["testing"]}
    assert {i: e["label"] for i, e in by_id.items()} == {"CQ500-CT-0": 0, "CQ500-CT-1": 1, "CQ500-CT-2": 1}
    assert by_id["CQ500-CT-2"]["findings"] == ["Fracture"]
    # Non-contrast soft tissue, closest to 5 mm: "CT Plain", never thin/bone/contrast/the 3-slice one.
    assert {e["series"] for e in by_id.values()} == {"CT Plain"}
    assert all(e["image"].endswith("Unknown Study/CT Plain") and e["n_slices"] > 3 for e in by_id.values())
    assert datalist["skipped"] == [{"id": "CQ500-CT-7", "reason": f"no study folder CQ500CT7 in {cq500_tree}"}]
    cq500.convert_cq500(cq500_tree, tmp_path / "majority.json", rule="majority")
    majority = {e["id"]: e["label"] for e in json.loads((tmp_path / "majority.json").read_text())["testing"]}
    assert majority == {"CQ500-CT-0": 0, "CQ500-CT-1": 1, "CQ500-CT-2": 0}


def test_cq500_chosen_series_reads_back_as_the_phantom_in_hu(cq500_tree, tmp_path):
    from monai.transforms import Orientation

    from ctfm.validation import load_volume

    cq500.convert_cq500(cq500_tree, tmp_path / "cq500.json")
    entry = json.loads((tmp_path / "cq500.json").read_text())["testing"][1]
    volume = Orientation(axcodes="SPL")(load_volume(cq500_tree / entry["image"]))
    expected = make_head_phantom(seed=1, bleed=True, scale=0.5, spacing=(5.0, 2.0, 2.0)).image
    np.testing.assert_array_equal(np.asarray(volume[0]), expected)


def test_cq500_problems_fail_clearly(cq500_tree, tmp_path):
    with pytest.raises(FileNotFoundError, match="reads.csv"):
        cq500.convert_cq500(tmp_path, tmp_path / "x.json")
    (tmp_path / "reads.csv").write_text("patient,finding\nCQ500-CT-0,1\n")
    with pytest.raises(ValueError, match="is not CQ500's reads.csv"):
        cq500.convert_cq500(tmp_path, tmp_path / "x.json")
