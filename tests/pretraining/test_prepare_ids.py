"""Scan ids and cache paths of the pretraining cache (ctfm.pretraining.prepare / cache)."""

from __future__ import annotations

import numpy as np

from ctfm.io import scan_id
from ctfm.pretraining.cache import cache_file, read_scan_hu, write_scan_hu
from ctfm.pretraining.prepare import SOURCE_SUFFIXES


def test_scan_ids_drop_volume_and_npy_suffixes_and_tell_folders_apart(tmp_path):
    a, b = tmp_path / "a" / "case 1.nii.gz", tmp_path / "b" / "case 1.nii.gz"
    id_a, id_b = scan_id(a, unique=True, suffixes=SOURCE_SUFFIXES), scan_id(b, unique=True, suffixes=SOURCE_SUFFIXES)
    assert id_a.startswith("case_1-") and id_b.startswith("case_1-") and id_a != id_b
    assert scan_id(tmp_path / "vol.npy", unique=True, suffixes=SOURCE_SUFFIXES).startswith("vol-")
    assert scan_id(tmp_path / "vol.npy").startswith("vol.npy")  # .npy is prepare-pretraining's addition only


def test_a_cached_scan_round_trips_and_leaves_no_temporary_file(tmp_path):
    volume = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4) - 1000
    path = write_scan_hu(volume, cache_file(tmp_path, "case_1-0123456789"))
    assert path == tmp_path / "scans" / "89" / "case_1-0123456789.npy"
    np.testing.assert_array_equal(read_scan_hu(path), volume)
    assert [p.name for p in path.parent.iterdir()] == [path.name]
