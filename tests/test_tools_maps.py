"""Patch embeddings, semantic search, OCD, saliency, stability and PCA on the real sample CT and phantoms.

The encoder has the full CT-FM topology with random weights (fixed seed), so the tests check what
holds for any weights: identical content gives identical embeddings (a shifted and cropped copy is
found again), the fast pooled grid is the per-window grid, an occluded bright object moves the
embedding most, a scan is perfectly stable against itself. Volumes are small (6 mm voxels, crops).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from ctfm.networks import build_encoder
from ctfm.patch_embeddings import (
    covering_shape,
    patch_embeddings,
    pooled_window_embeddings,
    window_embeddings,
    window_grid,
    windows_to_voxels,
)

CTFM = [sys.executable, "-m", "ctfm.cli.main"]
SPACING = ["--spacing", "6", "6", "6"]


def ctfm(*args):
    out = subprocess.run([*CTFM, *map(str, args)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return build_encoder().eval()


@pytest.fixture(scope="module")
def weights(encoder, tmp_path_factory):
    from ctfm.weights import save_pretrained

    return save_pretrained(encoder, tmp_path_factory.mktemp("w") / "ct_fm_RANDOM_INIT")


@pytest.fixture(scope="module")
def small_ct(sample_ct, tmp_path_factory):
    """A 48 x 48 x 36-voxel crop (3 mm) of the real abdomen CT, and a copy shifted by 24 mm and cropped."""
    img = nib.load(sample_ct.abdomen_ct)
    data = np.asarray(img.dataobj, dtype=np.int16)
    folder = tmp_path_factory.mktemp("ct")
    crop = (slice(30, 78), slice(20, 68), slice(50, 86))
    nib.save(nib.Nifti1Image(data[crop], img.affine @ np.diag([1, 1, 1, 1.0]) @ _shift(30, 20, 50)), folder / "source.nii.gz")
    shifted = (slice(38, 78), slice(20, 64), slice(50, 86))  # 8 voxels (24 mm) later along i, 4 fewer along j
    nib.save(nib.Nifti1Image(data[shifted], img.affine @ _shift(38, 20, 50)), folder / "target.nii.gz")
    return folder / "source.nii.gz", folder / "target.nii.gz"


def _shift(i, j, k):
    m = np.eye(4)
    m[:3, 3] = [i, j, k]
    return m


def test_window_grid_covers_the_volume_and_voxel_maps_average_windows():
    starts = window_grid((20, 33, 16), (16, 16, 16), (8, 16, 16))
    assert covering_shape((20, 33, 16), (16, 16, 16), (8, 16, 16)) == (24, 48, 16)
    assert starts.tolist()[:3] == [[0, 0, 0], [0, 16, 0], [0, 32, 0]] and len(starts) == 2 * 3 * 1
    voxels = windows_to_voxels(np.arange(6.0), starts, (16, 16, 16), (20, 33, 16))[0]
    assert voxels.shape == (20, 33, 16)
    assert voxels[0, 0, 0] == 0 and voxels[10, 0, 0] == pytest.approx(1.5)  # windows 0 and 3 overlap there


@pytest.mark.slow
def test_pooled_embeddings_share_the_grid_and_find_their_own_window(encoder, small_ct):
    from ctfm.transforms import preprocess
    from ctfm.patch_embeddings import cosine_similarity

    image = preprocess(small_ct[0], spacing=(6, 6, 6))
    window, stride = (16, 16, 16), (8, 16, 16)
    fast, starts_fast = pooled_window_embeddings(encoder, image, window, stride, progress=False)
    slow, starts_slow = window_embeddings(encoder, image, window, stride, progress=False)
    assert (starts_fast == starts_slow).all() and fast.shape == slow.shape
    # the odd windows along S come from the second (shifted) pass: they must be filled, not left zero
    assert (np.abs(fast).sum(1) > 0).all()
    for i in (0, len(starts_fast) // 2, len(starts_fast) - 1):
        assert cosine_similarity(fast[i], fast).argmax() == i
        assert cosine_similarity(slow[i], slow).argmax() == i
    with pytest.raises(ValueError, match="multiples of 16"):
        pooled_window_embeddings(encoder, image, (24, 16, 16), stride, progress=False)


@pytest.mark.slow
def test_search_finds_the_point_in_a_shifted_cropped_copy_and_fast_agrees(weights, small_ct, tmp_path):
    source, target = small_ct
    point = [24, 20, 18]  # voxel of source.nii.gz, inside the body
    world = nib.load(source).affine @ [*point, 1]
    results = {}
    for method in ("windows", "pooled"):
        ctfm("search", "--weights", weights, "--source", source, "--point", *point, *SPACING, "--box", 16, 16, 16,
             "--stride", 8, 8, 8, "--method", method, "--output-dir", tmp_path / method, target, source)
        rows = {r["target"]: r for r in csv.DictReader(open(tmp_path / method / "matches.csv"))}
        results[method] = rows
        for path, row in rows.items():
            found = np.array([float(row[f"world_{a}_mm"]) for a in "xyz"])
            # within one window stride (8 voxels of 6 mm) of the query point, in world mm
            assert np.abs(found - world[:3]).max() <= 8 * 6, (method, path, found, world)
        heat = nib.load(tmp_path / method / "target_similarity.nii.gz")
        assert heat.shape == nib.load(target).shape and np.allclose(heat.affine, nib.load(target).affine)
        png = np.asarray(Image.open(tmp_path / method / "target_similarity.png").convert("RGB"))
        assert png.shape[1] > 900 and (np.abs(png[..., 0].astype(int) - png[..., 2]) > 40).any()
    # searching the source itself: the fast and the per-window search agree within one stride (the query box is
    # centred on the point, the windows start on the grid; random weights rank close neighbours arbitrarily)
    same = [np.array([float(results[m][str(source)][f"world_{a}_mm"]) for a in "xyz"]) for m in ("windows", "pooled")]
    assert np.abs(same[0] - same[1]).max() <= 8 * 6


@pytest.mark.slow
def test_ocd_on_phantoms_reports_distance_and_inside_and_resumes(weights, tmp_path):
    from ctfm.data.phantoms import write_body_phantoms

    datalist = write_body_phantoms(tmp_path / "body", num=3, seed=0, spacing=(6.0, 6.0, 6.0), fov="thorax")
    args = ["ocd", "--weights", weights, "--datalist", datalist, *SPACING, "--box", 16, 16, 16, "--stride", 16, 16, 16,
            "--output-dir", tmp_path / "ocd"]
    ctfm(*args)
    rows = list(csv.DictReader(open(tmp_path / "ocd" / "ocd.csv")))
    assert len(rows) == 2
    for r in rows:
        match = np.array([float(r[f"match_{a}_mm"]) for a in "xyz"])
        centroid = np.array([float(r[f"centroid_{a}_mm"]) for a in "xyz"])
        assert float(r["ocd_cm"]) == pytest.approx(np.linalg.norm(match - centroid) / 10, abs=1e-2)
        assert r["inside"] in ("0", "1")
    summary = json.loads((tmp_path / "ocd" / "summary.json").read_text())
    assert summary["n_targets"] == 2 and summary["structure_id"] == 51
    assert summary["ocd_cm_mean"] == pytest.approx(np.mean([float(r["ocd_cm"]) for r in rows]))
    ctfm(*args)  # resumes: nothing is searched twice
    assert len(list(csv.DictReader(open(tmp_path / "ocd" / "ocd.csv")))) == 2


@pytest.mark.slow
def test_occlusion_map_peaks_on_an_inserted_object(encoder, small_ct):
    from ctfm.embeddings import embed_volume
    from ctfm.transforms import preprocess
    from ctfm.cli.saliency import occlusion_saliency

    image = preprocess(small_ct[0], spacing=(6, 6, 6)).as_tensor()[:, :16, :24, :24].clone()
    with_object = image.clone()
    with_object[:, 8:16, 8:16, 0:8] = (1500 + 1024) / 3072  # an 8 mm^3-voxel bone-dense block, one occluder cell
    e0, e1 = embed_volume(encoder, image), embed_volume(encoder, with_object)
    assert torch.nn.functional.cosine_similarity(e0, e1, dim=0) < 0.9999  # the object changes the embedding
    saliency = occlusion_saliency(encoder, with_object, mask_size=8, overlap=0.0, batch_size=9, progress=False)
    assert saliency.shape == (16, 24, 24)
    peak = np.unravel_index(saliency.argmax(), saliency.shape)
    assert 8 <= peak[0] < 16 and 8 <= peak[1] < 16 and 0 <= peak[2] < 8, peak


@pytest.mark.slow
def test_stability_registers_a_repositioned_rescan(weights, sample_ct, tmp_path):
    """The same patient lying 6 degrees rotated and 15 mm shifted in the scanner: ``--register`` recovers
    that motion, and registered windows are more alike than windows aligned by world coordinates only."""
    img = nib.load(sample_ct.abdomen_ct)
    angle = np.radians(6.0)
    motion = np.eye(4)
    motion[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    motion[:3, 3] = [8.0, -5.0, 12.0]
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.int16), motion @ img.affine), tmp_path / "retest.nii.gz")
    common = [sample_ct.abdomen_ct, tmp_path / "retest.nii.gz", "--weights", weights, *SPACING,
              "--box", 16, 16, 16, "--stride", 16, 16, 16]
    printed = ctfm("stability", *common, "--register", "--output-dir", tmp_path / "registered").stdout
    ctfm("stability", *common, "--output-dir", tmp_path / "world")
    matrix = np.loadtxt(tmp_path / "registered" / "registration.txt")
    np.testing.assert_allclose(matrix[:3, :3], np.linalg.inv(motion)[:3, :3], atol=0.005)
    np.testing.assert_allclose(matrix[:3, 3], np.linalg.inv(motion)[:3, 3], atol=1.0)  # mm
    registered = json.loads((tmp_path / "registered" / "summary.json").read_text())
    world = json.loads((tmp_path / "world" / "summary.json").read_text())
    assert registered["registration"]["rotation_deg"] == pytest.approx(6.0, abs=0.3) and "6." in printed
    assert registered["cosine_mean"] > world["cosine_mean"], (registered, world)


@pytest.mark.slow
def test_stability_is_one_with_itself_and_drops_for_a_perturbed_copy(weights, small_ct, tmp_path):
    source = small_ct[0]
    img = nib.load(source)
    rng = np.random.default_rng(0)
    noisy = np.asarray(img.dataobj, dtype=np.float32) * 1.1 + rng.normal(0, 80, img.shape)
    nib.save(nib.Nifti1Image(noisy.astype(np.int16), img.affine), tmp_path / "noisy.nii.gz")
    common = ["--weights", weights, *SPACING, "--box", 16, 16, 16, "--stride", 16, 16, 16]
    ctfm("stability", source, source, *common, "--output-dir", tmp_path / "self")
    ctfm("stability", source, tmp_path / "noisy.nii.gz", *common, "--output-dir", tmp_path / "noisy")
    same = json.loads((tmp_path / "self" / "summary.json").read_text())
    other = json.loads((tmp_path / "noisy" / "summary.json").read_text())
    assert same["cosine_min"] == pytest.approx(1.0, abs=1e-5) and same["mse_mean"] == pytest.approx(0.0, abs=1e-8)
    assert other["cosine_mean"] < 0.9999 and other["mse_mean"] > 1e-9
    cos_map = nib.load(tmp_path / "noisy" / "cosine.nii.gz")
    assert cos_map.shape == img.shape
    assert (tmp_path / "noisy" / "cosine.png").exists() and (tmp_path / "noisy" / "windows.csv").exists()


@pytest.mark.slow
def test_pca_writes_a_colour_figure_of_the_expected_size(weights, small_ct, tmp_path):
    ctfm("pca", "--weights", weights, *SPACING, "--box", 16, 16, 16, "--stride", 8, 16, 16, "--output-dir",
         tmp_path / "pca", *small_ct)
    png = np.asarray(Image.open(tmp_path / "pca" / "pca_concepts.png").convert("RGB"))
    assert png.shape == (800, 1200, 3)  # 15 x 10 inches at 80 dpi: two scans, three views each
    assert (np.abs(png[..., 0].astype(int) - png[..., 1]) > 40).any()  # CIELAB colours over the grey CT
    assert nib.load(tmp_path / "pca" / "source_pc1.nii.gz").shape == nib.load(small_ct[0]).shape


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
