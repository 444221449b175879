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


@pytest.mark.parametrize("offset, level", [((8, 0, 0), 3), ((4, 0, 0), 2), ((12, 0, 0), 2)])
def test_a_shifted_map_continues_the_unshifted_pass_and_equals_a_pass_of_its_own_away_from_the_ends(offset, level):
    # One long axis (544 voxels), so cells lie farther from both ends than the encoder's reach (~230 voxels): there
    # the map continued from the unshifted pass's stride-4 or stride-8 level must equal a whole pass over the
    # shifted copy. A wrong cut (cells, level, axis) moves every cell and fails here.
    import torch

    from ctfm.analysis.patch_embeddings import encoder_maps_done, feature_map, shared_level, shifted_feature_map
    from ctfm.networks import build_encoder

    torch.manual_seed(0)
    encoder = build_encoder().eval()
    image = torch.rand(1, 544, 16, 16)
    maps = {}
    continued = shifted_feature_map(encoder, image, offset, maps=maps)
    own = feature_map(encoder, image[:, offset[0]:])
    assert shared_level(offset) == level and continued.shape == own.shape
    middle = slice(15, 19)  # cells 15..18: 240..304 voxels, more than 230 from either end
    assert torch.allclose(continued[:, middle], own[:, middle], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(continued[:, :1], own[:, :1], atol=1e-4)  # at the start they see different things
    assert encoder_maps_done(maps) == 2  # the unshifted pass and this map; the kept levels are not counted
    assert shifted_feature_map(encoder, image, offset, maps=maps) is continued  # made once


def test_only_whole_cells_of_the_kept_levels_share_the_unshifted_pass():
    from ctfm.analysis.patch_embeddings import shared_level

    assert shared_level((0, 0, 0)) is None  # the unshifted pass itself
    assert shared_level((2, 0, 0)) is None and shared_level((8, 2, 0)) is None  # stride 2: a pass of its own
    assert shared_level((8, 8, 0)) == 3 and shared_level((4, 8, 0)) == 2
