"""CT-like phantoms with known ground truth: bodies, heads with and without bleeds, broken inputs.

The anatomy is drawn in the canonical CT-FM frame, an array in SPL order (axis 0 toward Superior,
1 toward Posterior, 2 toward patient Left), from ellipsoids, cylinders, boxes and tubes whose sizes
are adult millimetres times a ``scale``. A structure therefore keeps its physical size whatever the
spacing. The writers store each volume in a random orientation with the matching NIfTI (RAS+)
affine, so MONAI ``LoadImage`` + ``Orientation(axcodes="SPL")`` gives back the canonical array.

The default phantoms are miniatures: a quarter-size adult body and a 0.3-size head, sampled at
clinical spacing (in-plane 0.6-1.5 mm, slices 1-5 mm). A body then has about 36 x 70 x 100 voxels (S x P x L)
on average, from 12 to 160 per axis, and takes about 0.1 s on one core, which keeps tests on two CPU
cores fast. Pass ``shape`` or ``spacing`` for a given size, and ``scale=1.0`` (with a coarser
``spacing``) for an adult.

Labels are TotalSegmentator v2 "total" class ids looked up by name in :mod:`ctfm.registry`. The
body outline, which is not one of the 117 classes, comes as a separate mask, and so does a head
phantom's bleed. Every random draw comes from ``numpy.random.default_rng(seed)``. The same seed
gives the same arrays, and through the writers the same bytes (gzip without a timestamp).

    >>> ph = make_body_phantom(seed=0)
    >>> ph.image.dtype, ph.label.dtype, ph.orientation     # int16 HU, uint8 ids, e.g. 'LPS'
    >>> nib.save(ph.to_nifti("image"), "ct.nii.gz")        # stored in ph.orientation
    >>> write_body_phantoms("phantoms/body", num=4, seed=0)  # imagesTr/, labelsTr/, masksTr/, datalist.json

The package, by seam: :mod:`.tables` (sizes, spacings, HU ranges, structures), :mod:`.geometry` (the
:class:`Phantom`, NIfTI storage in any orientation, the voxel grid and its shapes), :mod:`.draw` (the draws
every phantom makes), :mod:`.body` and :mod:`.head` (the anatomy), :mod:`.writers` (datasets on disk) and
:mod:`.defects` (broken inputs).
"""

from __future__ import annotations

from ctfm.data.phantoms.body import make_body_phantom
from ctfm.data.phantoms.defects import DEFECTS, DEFECTS_MANIFEST, write_defective_inputs
from ctfm.data.phantoms.geometry import Phantom, to_nifti
from ctfm.data.phantoms.head import make_head_phantom
from ctfm.data.phantoms.tables import (
    AIR_HU,
    BODY_NOISE_STD,
    BODY_SCALE,
    BODY_STRUCTURES,
    FIELDS_OF_VIEW,
    HEAD_NOISE_STD,
    HEAD_SCALE,
    HEAD_STRUCTURES,
    HU_RANGES,
    INPLANE_SPACING,
    ORIENTATIONS,
    SLICE_SPACING,
    TEXTURE_STD,
)
from ctfm.data.phantoms.writers import DATALIST, write_body_phantoms, write_head_phantoms

__all__ = [
    "BODY_STRUCTURES",
    "DEFECTS",
    "FIELDS_OF_VIEW",
    "HEAD_STRUCTURES",
    "HU_RANGES",
    "ORIENTATIONS",
    "Phantom",
    "make_body_phantom",
    "make_head_phantom",
    "to_nifti",
    "write_body_phantoms",
    "write_defective_inputs",
    "write_head_phantoms",
]
