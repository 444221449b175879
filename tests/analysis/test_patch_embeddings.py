"""Patch embeddings: the window grid, voxel maps, and the fast pooled grid against one crop per window."""

from __future__ import annotations

import numpy as np
import pytest

from ctfm.analysis.patch_embeddings import (
    covering_shape,
    pooled_window_embeddings,
    window_embeddings,
    window_grid,
    windows_to_voxels,
)


def test_window_grid_covers_the_volume_and_voxel_maps_average_windows():
    starts = window_grid((20, 33, 16), (16, 16, 16), (8, 16, 16))
    assert covering_shape((20, 33, 16), (16, 16, 16), (8, 16, 16)) == (24, 48, 16)
    assert starts.tolist()[:3] == [[0, 0, 0], [0, 16, 0], [0, 32, 0]] and len(starts) == 2 * 3 * 1
    voxels = windows_to_voxels(np.arange(6.0), starts, (16, 16, 16), (20, 33, 16))[0]
    assert voxels.shape == (20, 33, 16)
    assert voxels[0, 0, 0] == 0 and voxels[10, 0, 0] == pytest.approx(1.5)  # windows 0 and 3 overlap there



@pytest.mark.parametrize("shape, window, stride", [((37, 70, 45), (16, 64, 32), (8, 16, 16)),
                                                    ((20, 33, 17), (16, 16, 16), (16, 16, 16))])
def test_voxel_maps_of_a_regular_grid_equal_the_window_by_window_sum(shape, window, stride):
    # a regular grid takes the running-sum path; the same windows in another order take the per-window loop
    starts = window_grid(shape, window, stride)
    values = np.random.default_rng(0).random((len(starts), 2)).astype(np.float32)
    order = np.random.default_rng(1).permutation(len(starts))
    fast = windows_to_voxels(values, starts, window, shape)
    loop = windows_to_voxels(values[order], starts[order], window, shape)
    assert fast.shape == (2, *shape) and np.allclose(fast, loop, atol=1e-6)

@pytest.mark.slow
def test_pooled_embeddings_share_the_grid_and_find_their_own_window(encoder, small_ct):
    from ctfm.transforms import preprocess
    from ctfm.analysis.patch_embeddings import cosine_similarity

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
