"""Occlusion saliency: an inserted bright object is where the map peaks."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.mark.slow
def test_occlusion_map_peaks_on_an_inserted_object(encoder, small_ct):
    from ctfm.analysis.embeddings import embed_volume
    from ctfm.transforms import preprocess
    from ctfm.analysis.saliency import occlusion_saliency

    image = preprocess(small_ct[0], spacing=(6, 6, 6)).as_tensor()[:, :16, :24, :24].clone()
    with_object = image.clone()
    with_object[:, 8:16, 8:16, 0:8] = (1500 + 1024) / 3072  # an 8 mm^3-voxel bone-dense block, one occluder cell
    e0, e1 = embed_volume(encoder, image), embed_volume(encoder, with_object)
    assert torch.nn.functional.cosine_similarity(e0, e1, dim=0) < 0.9999  # the object changes the embedding
    saliency = occlusion_saliency(encoder, with_object, mask_size=8, overlap=0.0, batch_size=9, progress=False)
    assert saliency.shape == (16, 24, 24)
    peak = np.unravel_index(saliency.argmax(), saliency.shape)
    assert 8 <= peak[0] < 16 and 8 <= peak[1] < 16 and 0 <= peak[2] < 8, peak
