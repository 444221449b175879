"""Label-map helpers shared by tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np


def keep_largest_structures(label_path: str | Path, keep: int, out: str | Path) -> list[int]:
    """Write ``out``: the label map at ``label_path`` with only its ``keep`` largest structures (by voxel
    count; the rest become background), same grid and header. Returns the kept ids, largest first."""
    label = nib.load(label_path)
    ids = np.asarray(label.dataobj).astype(np.int16)
    present, counts = np.unique(ids[ids > 0], return_counts=True)
    largest = present[np.argsort(-counts)[:keep]]
    nib.save(nib.Nifti1Image(np.where(np.isin(ids, largest), ids, 0).astype(np.uint8), label.affine, label.header), out)
    return [int(i) for i in largest]
