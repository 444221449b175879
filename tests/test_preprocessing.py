"""The canonical CT-FM preprocessing and the input checks behind it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctfm.registry import EMBEDDING_SPACING
from ctfm.transforms import ct_fm_transforms, hu_scaling, preprocess
from ctfm.validation import CTInputError, check_files_exist


def test_hu_scaling_maps_the_ct_fm_range_with_clipping():
    hu = torch.tensor([[-3024.0, -1024.0, 512.0, 2048.0, 3071.0]])
    scaled = hu_scaling("image")({"image": hu})["image"]
    assert torch.allclose(torch.as_tensor(scaled), torch.tensor([[0.0, 0.0, 0.5, 1.0, 1.0]]))


def test_real_ct_is_spl_at_3x1x1_cropped_and_scaled(sample_ct):
    out = ct_fm_transforms(label_key="label")({"image": str(sample_ct.abdomen_ct), "label": str(sample_ct.abdomen_label)})
    image, label = out["image"], out["label"]
    affine = np.asarray(image.affine)
    # SPL in a RAS+ world: axis 0 runs along +z (superior), axis 1 along -y (posterior), axis 2 along -x (left).
    assert np.argmax(np.abs(affine[:3, 0])) == 2 and affine[2, 0] > 0
    assert np.argmax(np.abs(affine[:3, 1])) == 1 and affine[1, 1] < 0
    assert np.argmax(np.abs(affine[:3, 2])) == 0 and affine[0, 2] < 0
    assert np.allclose(np.linalg.norm(affine[:3, :3], axis=0), EMBEDDING_SPACING)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert image.shape == label.shape  # labels follow every spatial step
    # Foreground crop on HU > 0: the borders of the crop touch the body, not empty air.
    hu = image[0] * 3072 - 1024
    assert all(float(hu.select(axis, idx).max()) > 0 for axis in range(3) for idx in (0, -1))
    # The liver (id 5) lies on the patient's right, i.e. low indices of the L axis.
    liver = np.argwhere(np.asarray(label[0]) == 5)
    assert liver[:, 2].mean() < label.shape[3] / 2


def test_dicom_series_folder_is_read(sample_ct):
    image = preprocess(sample_ct.dicom_dir, spacing=None, crop_foreground=False)
    assert image.ndim == 4 and image.shape[0] == 1
    assert sorted(image.shape[1:]) == [20, 512, 512]
    assert image.shape[1] == 20  # 20 axial slices end up along S


def test_min_size_pads_with_air():
    img = torch.full((1, 4, 6, 6), 40.0)
    img[0, 0, 0, 0] = -1000.0
    out = ct_fm_transforms(spacing=None, crop_foreground=False, min_size=(8, 8, 8), load=False)({"image": img})
    assert tuple(out["image"].shape) == (1, 8, 8, 8)
    assert float(out["image"].min()) == 0.0  # padding is -1024 HU -> 0 after scaling


@pytest.fixture(scope="module")
def defects(tmp_path_factory):
    from ctfm.data.phantoms import write_defective_inputs

    return write_defective_inputs(tmp_path_factory.mktemp("defects"), seed=0)


@pytest.mark.parametrize(
    "name, message",
    [
        ("truncated", "cannot be read as an image"),
        ("two_d", "expected a 3-D volume"),
        ("four_d", "CT-FM takes one|expected a 3-D volume"),
        ("constant", "the volume is constant"),
        ("mr_like", "not Hounsfield units"),
        ("uint8_0_255", "not Hounsfield units"),
    ],
)
def test_defective_image_fails_naming_file_problem_and_fix(defects, name, message):
    path = defects[name]
    with pytest.raises(Exception) as err:
        preprocess(path)
    chain, cur = [], err.value
    while cur is not None:  # MONAI wraps transform errors; ours is inside
        chain.append(cur)
        cur = cur.__cause__
    ours = [e for e in chain if isinstance(e, CTInputError)]
    assert ours, f"no CTInputError for {name}: {err.value!r}"
    assert str(path) in str(ours[0])
    assert pytest.importorskip("re").search(message, str(ours[0]))


def test_label_on_another_grid_is_refused(defects):
    image, label = defects["label_other_grid_image"], defects["label_other_grid"]
    with pytest.raises(Exception) as err:
        ct_fm_transforms(label_key="label")({"image": str(image), "label": str(label)})
    text = repr(err.value) + "".join(repr(e) for e in [err.value.__cause__] if e)
    assert "not on the grid of image" in text or "another position" in text
    assert str(label) in text


def test_missing_files_are_listed_up_front(tmp_path):
    items = [{"image": str(tmp_path / "a.nii.gz"), "label": str(tmp_path / "a_seg.nii.gz")}]
    with pytest.raises(FileNotFoundError, match="2 file\\(s\\) of the datalist do not exist"):
        check_files_exist(items)
    with pytest.raises(FileNotFoundError, match="no such file"):
        preprocess(tmp_path / "missing.nii.gz")


def field_of_view_phantom():
    """A 40 HU body in -1000 HU air, inside a scanner field of view padded with -3024 HU (outside it)."""
    from monai.data import MetaTensor

    img = torch.full((1, 30, 30, 30), -3024.0)
    img[:, 5:25, 5:25, 5:25] = -1000.0  # air inside the field of view
    img[:, 12:18, 10:20, 11:19] = 40.0  # the body
    return MetaTensor(img, affine=torch.eye(4))


def test_segmentation_crop_follows_the_authors_after_scaling_with_a_margin():
    """The authors' segmentation recipe crops after scaling (voxels above -1024 HU) with 10 voxels of margin;
    the pretraining recipe crops on HU > 0 before scaling."""
    authors = ct_fm_transforms(spacing=None, load=False, crop_after_scaling=True, crop_margin=2)
    pretraining = ct_fm_transforms(spacing=None, load=False)
    assert tuple(authors({"image": field_of_view_phantom()})["image"].shape) == (1, 24, 24, 24)  # 20 + 2 x 2
    assert tuple(pretraining({"image": field_of_view_phantom()})["image"].shape) == (1, 8, 10, 6)  # the body (RAS in, SPL out: axes reversed)


def test_segmentation_preprocessing_inverts_to_the_input_grid():
    from monai.transforms import Invertd

    prep = ct_fm_transforms(spacing=(2.0, 2.0, 2.0), load=False, crop_after_scaling=True, crop_margin=10, min_size=(32, 32, 32))
    data = prep({"image": field_of_view_phantom()})
    data["pred"] = data["image"].clone()
    back = Invertd(keys="pred", transform=prep, orig_keys="image", nearest_interp=True)(data)["pred"]
    assert tuple(back.shape) == (1, 30, 30, 30)
    np.testing.assert_allclose(np.asarray(back.affine), np.eye(4), atol=1e-5)
    assert float(back[0, 15, 15, 15]) == pytest.approx((40 + 1024) / 3072, abs=1e-3)  # the body is where it was
