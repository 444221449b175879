"""A scan as the embedding tools see it: read as stored, preprocessed onto the CT-FM grid, and mapped back.

Every tool reads its inputs here (:class:`Scan`, :func:`datalist_entries`), converts between the
file's voxels, world coordinates (RAS mm, as MONAI reads every format) and the CT-FM grid, and
writes its voxel maps onto the scan's own grid (:func:`save_map`), so they overlay the original
file in any viewer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


def as_volume(image) -> torch.Tensor:
    """A float tensor without MONAI metadata, channel-first ``(1, S, P, L)``; a bare ``(S, P, L)`` gets its channel."""
    image = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"expected a preprocessed volume of shape (1, S, P, L), got {tuple(image.shape)}")
    return image.float()


def voxel_to_world(affine, voxel) -> np.ndarray:
    """World (RAS mm, as MONAI reads every format) of voxel coordinates ``(..., 3)``."""
    a = np.asarray(affine, dtype=float)
    return np.asarray(voxel, dtype=float) @ a[:3, :3].T + a[:3, 3]


def world_to_voxel(affine, world) -> np.ndarray:
    """Voxel coordinates of world (RAS mm) points ``(..., 3)``."""
    a = np.linalg.inv(np.asarray(affine, dtype=float))
    return np.asarray(world, dtype=float) @ a[:3, :3].T + a[:3, 3]


@dataclass
class Scan:
    """A scan as read (``raw``: its own grid, HU) and preprocessed (``image``: the CT-FM grid, (1, S, P, L))."""

    path: Path
    raw: object
    image: object

    @classmethod
    def read(cls, path, spacing) -> "Scan":
        from ctfm.transforms import preprocess
        from ctfm.validation import load_volume

        return cls(Path(path), load_volume(path), preprocess(path, spacing=spacing))

    def file_voxel_to_grid(self, voxel) -> np.ndarray:
        return world_to_voxel(self.image.affine, voxel_to_world(self.raw.affine, voxel))

    def world_to_grid(self, world) -> np.ndarray:
        return world_to_voxel(self.image.affine, world)

    def grid_to_world(self, voxel) -> np.ndarray:
        return voxel_to_world(self.image.affine, voxel)


def datalist_entries(datalist: str | os.PathLike, dataset_dir: str | os.PathLike | None = None) -> list[dict]:
    """Every entry of every list in a decathlon-style datalist (training, validation, testing, ...), paths resolved
    against ``dataset_dir`` (default: the datalist's folder)."""
    from ctfm.validation import load_datalist, read_datalist

    lists = [k for k, v in read_datalist(datalist).items() if isinstance(v, list) and v and k != "labels"]
    return [d for k in lists for d in load_datalist(datalist, k, dataset_dir, keys=("image",))]


def save_map(values: np.ndarray, grid, path, like=None, mode: str = "bilinear"):
    """Write a voxel map ``(S, P, L)`` that lies on the preprocessed ``grid`` (a MetaTensor) as NIfTI.

    With ``like`` (the scan as read, a MetaTensor from :func:`ctfm.validation.load_volume`) the map
    is resampled onto the scan's own voxel grid (MONAI ``ResampleToMatch``), so it overlays the
    original file in any viewer; without it, it keeps the CT-FM grid. Returns the path.
    """
    import nibabel as nib
    from monai.data import MetaTensor
    from monai.transforms import ResampleToMatch

    heat = MetaTensor(torch.as_tensor(np.ascontiguousarray(values), dtype=torch.float32)[None], affine=grid.affine)
    if like is not None:
        heat = ResampleToMatch(mode=mode, padding_mode="zeros")(heat, img_dst=like)
    affine = np.asarray(heat.affine, dtype=float)
    # MONAI affines are RAS; NIfTI stores RAS too, so the array and affine are written as they are.
    nib.save(nib.Nifti1Image(heat[0].numpy().astype(np.float32), affine), str(path))
    return path
