"""Broken inputs, one per defect, for the error tests: each must stop with a clear message."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from ctfm.data.phantoms.body import make_body_phantom
from ctfm.data.phantoms.geometry import to_nifti
from ctfm.data.phantoms.writers import _case_seed, _check_seed_num, _generator, _json_bytes, _nifti_bytes, _write_files


# Each defective input and its defect, as the manifest and the error tests describe it.
DEFECTS: dict[str, str] = {
    "truncated": "a valid .nii.gz cut in half: the header reads, the voxel data ends early",
    "empty": "a zero-byte file named .nii.gz",
    "not_nifti": "a text file named .nii.gz",
    "two_d": "a 2-D image (one axial slice of a CT)",
    "four_d": "a 4-D image (three phases of one CT)",
    "constant": "a 3-D volume in which every voxel is 0",
    "mr_like": "MR-like intensities: 0..4000, no air at -1000",
    "uint8_0_255": "a CT squeezed into 0..255 and stored as uint8, as exported from PNG slices",
    "label_other_grid_image": "a valid CT phantom: the image that goes with label_other_grid",
    "label_other_grid": "a label map on another grid than its image (half the resolution, shifted origin)",
}
DEFECTS_MANIFEST = "defects.json"


def _mr_like(image: np.ndarray, rng) -> np.ndarray:
    """T1-like intensities from the CT's tissues: fat bright, water mid, air and bone dark, 0..4000."""
    mr = np.interp(image, [-1000, -850, -100, 40, 250, 1200], [15, 60, 3200, 1200, 1800, 300])
    return np.clip(mr + rng.normal(0, 20, image.shape), 0, 4000).astype(np.int16)


def write_defective_inputs(output_dir: str | os.PathLike, seed: int = 0, *, overwrite: bool = False) -> dict[str, Path]:
    """Write one file per defect in ``DEFECTS`` and a ``defects.json`` manifest; returns name -> path.

    All but ``empty`` and ``not_nifti`` start from a small body phantom, so the defect is the only
    thing wrong with them. ``label_other_grid`` goes with ``label_other_grid_image``.
    """
    _check_seed_num(seed)
    paths = {name: f"{name}.nii.gz" for name in DEFECTS}

    def produce():
        rng = np.random.default_rng([seed, 2])
        ph = make_body_phantom(_case_seed(seed, 0), shape=(24, 32, 40), fov="thorax")
        ct = ph.to_nifti("image")
        full = _nifti_bytes(ct)
        orient = ph.orientation
        yield paths["truncated"], full[: len(full) // 2]
        yield paths["empty"], b""
        yield paths["not_nifti"], b"This is a text file, not a NIfTI image.\n"
        middle = ph.image.shape[0] // 2
        two_d = nib.Nifti1Image(ph.image[middle], np.diag([-1.0, -1.0, 1.0, 1.0]))
        yield paths["two_d"], _nifti_bytes(two_d)
        phases = np.stack([ph.image, ph.image + 30, ph.image - 20], axis=-1).astype(np.int16)
        yield paths["four_d"], _nifti_bytes(to_nifti(phases, ph.affine, orient))
        yield paths["constant"], _nifti_bytes(to_nifti(np.zeros_like(ph.image), ph.affine, orient))
        yield paths["mr_like"], _nifti_bytes(to_nifti(_mr_like(ph.image, rng), ph.affine, orient))
        squeezed = np.clip((ph.image.astype(np.float32) + 160) / 400 * 255, 0, 255).round().astype(np.uint8)
        yield paths["uint8_0_255"], _nifti_bytes(to_nifti(squeezed, ph.affine, orient))
        yield paths["label_other_grid_image"], full
        coarse = ph.affine.copy()
        coarse[:3, :3] *= 2  # every second voxel: half the resolution ...
        coarse[:3, 3] += 7.0  # ... and a shifted origin
        yield paths["label_other_grid"], _nifti_bytes(to_nifti(ph.label[::2, ::2, ::2], coarse, orient))
        manifest = {
            "description": "Defective inputs for error tests; each file has exactly one defect.",
            "defects": {name: {"path": paths[name], "defect": text} for name, text in DEFECTS.items()},
            "generator": _generator("write_defective_inputs", seed=seed),
        }
        yield DEFECTS_MANIFEST, _json_bytes(manifest)

    root = Path(output_dir)
    _write_files(root, produce, overwrite, f"write_defective_inputs(seed={seed})")
    return {name: root / rel for name, rel in paths.items()}
