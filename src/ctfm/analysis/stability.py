"""Test-retest stability of CT-FM patch embeddings: two scans of one patient, patch by patch (Extended Data Figure 7).

The second scan (retest) is brought onto the first scan's CT-FM grid: through the world
coordinates both files carry (scanner coordinates; test-retest series of one session often
agree), through a rigid registration (``--register``: ITK, versor rigid transform initialised
by image moments, mean squares of HU at 6 mm; the matrix is written to ``registration.txt``), or
through a ``--transform`` file, a 4 x 4 matrix in world RAS mm that maps retest points onto test points
(from any registration tool: a rigid registration is a 4 x 4 matrix). Both are cut into
the same windows; per window it reports the cosine similarity and the mean squared error of the
two embeddings, flags outlier windows (cosine below Q1 - 1.5 IQR of the windows inside the body,
Tukey's rule; in the paper these were registration or positioning differences), and writes
cosine and MSE maps (NIfTI on the test scan's grid, PNG), ``windows.csv`` and ``summary.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DEFAULT_BOX = (32, 64, 64)
DEFAULT_STRIDE = (16, 32, 32)
BODY_FRACTION = 0.1  # a window is 'inside the body' when at least this fraction of it is above -500 HU
REGISTRATION_SPACING = 6.0  # mm: coarse enough to be quick, fine enough for sub-millimetre rigid alignment
REGISTRATION_FILE = "registration.txt"


def read_transform(path) -> np.ndarray:
    """A 4 x 4 homogeneous matrix from a text file (whitespace or comma separated), checked."""
    try:
        matrix = np.loadtxt(path, delimiter="," if "," in Path(path).read_text() else None, dtype=float)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read a 4x4 matrix ({err}); write 4 lines of 4 numbers.") from err
    if matrix.shape != (4, 4) or not np.allclose(matrix[3], [0, 0, 0, 1]):
        raise ValueError(f"{path}: expected a 4x4 homogeneous matrix with last row 0 0 0 1, got shape {matrix.shape}.")
    return matrix


def rigid_registration(test, retest, spacing: float = REGISTRATION_SPACING) -> tuple[np.ndarray, float]:
    """The rigid 4 x 4 matrix (world RAS mm) that maps ``retest`` points onto ``test`` points, and the final metric.

    Both are MetaTensors as read (HU, RAS affines). ITK's v4 registration with a versor rigid
    transform, centred and initialised by image moments, mean squares of HU, on copies resampled
    to ``spacing`` mm. ITK works in LPS and its transform maps fixed (test) points to moving
    (retest) points; the result is converted to RAS and inverted.
    """
    import itk
    from monai.data.itk_torch_bridge import metatensor_to_itk_image
    from monai.transforms import Spacing

    def coarse(image):
        return metatensor_to_itk_image(Spacing(pixdim=(spacing,) * 3, mode="bilinear")(image).float(), channel_dim=0,
                                       dtype=np.float32)

    fixed, moving = coarse(test), coarse(retest)
    image_type = type(fixed)
    transform = itk.VersorRigid3DTransform[itk.D].New()
    initializer = itk.CenteredTransformInitializer[itk.VersorRigid3DTransform[itk.D], image_type, image_type].New(
        Transform=transform, FixedImage=fixed, MovingImage=moving)
    initializer.MomentsOn()
    initializer.InitializeTransform()
    metric = itk.MeanSquaresImageToImageMetricv4[image_type, image_type].New()
    optimizer = itk.RegularStepGradientDescentOptimizerv4[itk.D].New(
        LearningRate=2.0, MinimumStepLength=1e-3, NumberOfIterations=300, RelaxationFactor=0.5)
    optimizer.SetScalesEstimator(itk.RegistrationParameterScalesFromPhysicalShift[type(metric)].New(Metric=metric))
    registration = itk.ImageRegistrationMethodv4[image_type, image_type].New(
        FixedImage=fixed, MovingImage=moving, Metric=metric, Optimizer=optimizer, InitialTransform=transform,
        InPlace=True)
    registration.SetNumberOfLevels(1)
    registration.SetShrinkFactorsPerLevel([1])
    registration.SetSmoothingSigmasPerLevel([0])
    registration.Update()
    lps = np.eye(4)
    lps[:3, :3] = itk.array_from_matrix(transform.GetMatrix())
    lps[:3, 3] = np.asarray(transform.GetOffset())
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS <-> RAS
    return np.linalg.inv(flip @ lps @ flip), float(optimizer.GetValue())


def describe_rigid(matrix: np.ndarray) -> dict:
    """Rotation angle (degrees) and translation length (mm) of a rigid 4 x 4 matrix."""
    cos = np.clip((np.trace(matrix[:3, :3]) - 1) / 2, -1.0, 1.0)
    return {"rotation_deg": round(float(np.degrees(np.arccos(cos))), 3),
            "translation_mm": round(float(np.linalg.norm(matrix[:3, 3])), 3)}


def retest_on_test_grid(test_image, retest, transform: np.ndarray | None = None):
    """The retest scan (as read, HU), HU-scaled and resampled onto the preprocessed ``test_image`` grid (air outside it)."""
    import torch
    from monai.transforms import ResampleToMatch

    from ctfm.transforms import hu_scaling

    if transform is not None:
        retest = retest.clone()  # the caller's volume keeps its own affine
        retest.affine = torch.as_tensor(np.asarray(transform), dtype=torch.float64) @ retest.affine.double()
    scaled = hu_scaling("image")({"image": retest})["image"]
    return ResampleToMatch(mode="bilinear", padding_mode="zeros")(scaled, img_dst=test_image)


def tukey_outliers(values: np.ndarray, use: np.ndarray) -> np.ndarray:
    """True where a value lies below Q1 - 1.5 IQR of the values selected by ``use``."""
    if not use.any():
        return np.zeros_like(use)
    q1, q3 = np.percentile(values[use], [25, 75])
    return use & (values < q1 - 1.5 * (q3 - q1))


def compare_patches(model, test, retest, box, stride, method="pooled", device="cpu", batch_size=8) -> dict:
    """Per-window cosine similarity and MSE between the embeddings of two volumes on one grid."""
    from ctfm.analysis.patch_embeddings import patch_embeddings, window_body_fraction

    a, sa = patch_embeddings(model, test, box, stride, method=method, device=device, batch_size=batch_size)
    b, _ = patch_embeddings(model, retest, box, stride, method=method, device=device, batch_size=batch_size)
    cos = np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    mse = np.mean((a - b) ** 2, axis=1)
    inside = window_body_fraction(test, sa, box) >= BODY_FRACTION
    return {"starts": sa, "cosine": cos, "mse": mse, "inside": inside, "outlier": tukey_outliers(cos, inside)}


def stability(test, retest, weights, output_dir, transform=None, box=DEFAULT_BOX, stride=DEFAULT_STRIDE,
              method="pooled", spacing=None, batch_size=8, device="cpu", encoder=None, register=False) -> dict:
    """Compare two scans of one patient patch by patch; write maps, windows.csv, summary.json; return the summary."""
    from ctfm.analysis.patch_embeddings import window_centres, windows_to_voxels
    from ctfm.analysis.scans import Scan, save_map
    from ctfm.io import csv_text, new_output_dir, write_text_atomic
    from ctfm.registry import EMBEDDING_SPACING
    from ctfm.validation import check_ct_volume, check_files_exist, load_volume
    from ctfm.viz import save_heatmap_png
    from ctfm.weights import load_pretrained

    spacing = tuple(spacing or EMBEDDING_SPACING)
    check_files_exist([{"image": test}, {"image": retest}], keys=("image",), where="the stability inputs")
    if register and transform:
        raise ValueError("give either register or transform, not both: the transform already aligns the scans.")
    matrix = read_transform(transform) if transform else None
    out = new_output_dir(output_dir)
    model = encoder if encoder is not None else load_pretrained(weights)
    scan = Scan.read(test, spacing)
    retest_raw = load_volume(retest)
    check_ct_volume(retest_raw, str(retest))
    registration = None
    if register:
        matrix, metric = rigid_registration(scan.raw, retest_raw)
        np.savetxt(out / REGISTRATION_FILE, matrix, fmt="%.6f",
                   header="retest -> test, world RAS mm (rigid, ITK versor; use with --transform)")
        registration = {"file": str(out / REGISTRATION_FILE), "final_mean_squares": round(metric, 6), **describe_rigid(matrix)}
    moved = retest_on_test_grid(scan.image, retest_raw, matrix)
    result = compare_patches(model, scan.image, moved, box, stride, method, device, batch_size)
    shape = scan.image.shape[1:]
    centres = scan.grid_to_world(window_centres(result["starts"], box))
    write_text_atomic(out / "windows.csv", csv_text(
        ["start_s", "start_p", "start_l", "centre_x_mm", "centre_y_mm", "centre_z_mm", "cosine", "mse", "inside_body",
         "outlier"],
        ([*st, *np.round(c, 2), round(float(cos), 6), float(mse), int(ins), int(outl)]
         for st, c, cos, mse, ins, outl in zip(result["starts"], centres, result["cosine"], result["mse"],
                                               result["inside"], result["outlier"]))))
    for name, label in (("cosine", "cosine similarity test vs retest"), ("mse", "MSE of the embeddings")):
        voxels = windows_to_voxels(result[name], result["starts"], box, shape)[0]
        save_map(voxels, scan.image, out / f"{name}.nii.gz", like=scan.raw)
        worst = result["starts"][np.argmin(result["cosine"])] + np.array(box) // 2
        save_heatmap_png(scan.image, voxels, out / f"{name}.png", centre=worst, spacing=spacing, label=label,
                         cmap="viridis" if name == "cosine" else "magma", marker="least similar window",
                         title=f"test-retest {name}: {Path(test).name} vs {Path(retest).name}")
    inside = result["inside"]
    cos_in = result["cosine"][inside] if inside.any() else result["cosine"]
    summary = {"test": str(test), "retest": str(retest), "transform": str(transform) if transform else None,
               "registration": registration,
               "windows": int(len(inside)), "windows_inside_body": int(inside.sum()),
               "cosine_mean": float(cos_in.mean()), "cosine_median": float(np.median(cos_in)),
               "cosine_min": float(cos_in.min()), "mse_mean": float(result["mse"][inside].mean() if inside.any() else result["mse"].mean()),
               "outliers": int(result["outlier"].sum()), "method": method, "box": list(box), "stride": list(stride),
               "spacing": list(spacing)}
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    return summary
