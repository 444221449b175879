"""Patch pairs for intra-sample contrastive learning, and a dataset that survives bad scans.

One dataset item is one scan: ``crops_per_scan`` patches drawn at random from it, each turned into
two independently augmented views, as a tensor ``(M, 2, 1, *patch_size)``. A batch of
``scans_per_batch`` items is ``(S, M, 2, 1, *patch_size)``: the loss knows which patches share a scan.

The data is an endless stream (:class:`SampleStream`): item ``p`` of it is a scan of the ``p // N``-th
shuffle of the N scans, with crops and views drawn from a seed of ``(seed, p)``. What an iteration reads
is a function of the seed and the iteration alone, so a run resumed at any checkpoint reads what a run
never stopped would (whatever ``num_workers``, ``epoch_length`` or the dataset's length).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from monai.data import Dataset, get_track_meta, set_track_meta
from monai.data.utils import set_rnd
from monai.transforms import Compose, Randomizable, Resize

from ctfm.registry import AIR_HU, HU_MAX, HU_MIN
from ctfm.io import root_cause
from ctfm.pretraining.cache import read_scan_hu

logger = logging.getLogger("ct_fm_pretrain")


class RandomResizedCrop(Randomizable):
    """The authors' ``transforms/ssl.py::RandomResizedCrop``: one scale s ~ U(scale) for all axes,
    a crop of s x the patch at a random place, resized back to the patch size (trilinear)."""

    def __init__(self, size: Sequence[int], scale: Sequence[float] = (0.33, 1.0)):
        self.scale = tuple(scale)
        self.resize = Resize(spatial_size=tuple(size), mode="trilinear")

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        s = self.R.uniform(*self.scale)
        shape = img.shape[1:]
        size = [max(1, round(n * s)) for n in shape]
        start = [self.R.randint(0, n - k + 1) for n, k in zip(shape, size)]
        crop = img[(slice(None), *[slice(a, a + k) for a, k in zip(start, size)])]
        return self.resize(crop)


class ScanPatchPairs(Randomizable):
    """``{"image": path}`` -> ``(M, 2, 1, *patch_size)`` float32 views in 0..1 (HU scaled as CT-FM does).

    The scan is read in Hounsfield units, SPL, 3 x 1 x 1 mm, foreground-cropped (a cached ``.npy`` is
    memory-mapped, any other file is preprocessed on the fly), padded with air to the patch size, and
    M patches are cut at random places. Only the patches' voxels are read from a memory-mapped cache.
    """

    def __init__(self, patch_size: Sequence[int], crops_per_scan: int, view_transform: Compose, image_key="image"):
        self.patch_size = tuple(int(p) for p in patch_size)
        self.crops_per_scan = int(crops_per_scan)
        self.view_transform = view_transform
        self.image_key = image_key

    def set_random_state(self, seed=None, state=None):
        super().set_random_state(seed, state)
        self.view_transform.set_random_state(seed=self.R.randint(0, 2**31))
        return self

    def __call__(self, item: dict) -> torch.Tensor:
        volume = read_scan_hu(item[self.image_key])  # (S, P, L) HU, int16 memmap or array
        short = [max(0, p - n) for p, n in zip(self.patch_size, volume.shape)]
        if any(short):
            volume = np.pad(volume, [(k // 2, k - k // 2) for k in short], constant_values=AIR_HU)
        pairs = []
        track_meta = get_track_meta()
        set_track_meta(False)  # plain tensors: MONAI's metadata bookkeeping would cost more than the maths
        try:
            for _ in range(self.crops_per_scan):
                start = [self.R.randint(0, n - p + 1) for n, p in zip(volume.shape, self.patch_size)]
                patch = volume[tuple(slice(a, a + p) for a, p in zip(start, self.patch_size))]
                # HU -> 0..1 with clipping: CT-FM's ScaleIntensityRange, on the patch only.
                patch = np.clip((patch.astype(np.float32) - HU_MIN) / (HU_MAX - HU_MIN), 0.0, 1.0)
                views = [torch.as_tensor(self.view_transform(torch.from_numpy(patch)[None])) for _ in range(2)]
                pairs.append(torch.stack(views))
        finally:
            set_track_meta(track_meta)
        return torch.stack(pairs).float()


class SampleStream(torch.utils.data.Sampler):
    """The endless stream of item positions a pretraining run reads, from the iteration it resumes after.

    Iteration ``i`` of process ``rank`` (of ``world_size``, from ``torch.distributed`` when it is set up)
    reads positions ``(i * world_size + rank) * batch_size`` onwards, ``batch_size`` of them;
    :class:`SkipBadScansDataset` turns each into a scan and the seed of its crops and views.
    """

    def __init__(self, batch_size: int, start_iteration: int = 0, rank: int | None = None, world_size: int | None = None):
        distributed = dist.is_available() and dist.is_initialized()
        self.rank = (dist.get_rank() if distributed else 0) if rank is None else int(rank)
        self.world_size = (dist.get_world_size() if distributed else 1) if world_size is None else int(world_size)
        self.batch_size, self.start_iteration = int(batch_size), int(start_iteration)

    def __iter__(self):
        iteration = self.start_iteration
        while True:
            first = (iteration * self.world_size + self.rank) * self.batch_size
            yield from range(first, first + self.batch_size)
            iteration += 1


class SkipBadScansDataset(Dataset):
    """A MONAI ``Dataset`` of stream positions (:class:`SampleStream`) that never stops a run for one bad scan.

    Position ``p`` is scan ``p % N`` of the ``p // N``-th shuffle of the N scans (each shuffle seeded by
    ``(seed, p // N)``), its random draws seeded by ``(seed, p)``. A scan whose reading or sampling raises
    (corrupt, truncated, too small, constant, not CT...) is recorded in ``skip_log`` (CSV: file, reason)
    and another scan, drawn from the same seed, takes its place. A run stops only when
    ``max_consecutive_failures`` scans in a row fail (then the data is wrong).
    """

    def __init__(self, data, transform, skip_log: str | os.PathLike, max_consecutive_failures: int = 50, seed: int = 0):
        super().__init__(data=data, transform=transform)
        self.skip_log = Path(skip_log)
        self.max_consecutive_failures = max_consecutive_failures
        self.seed = int(seed)
        self._logged: set[str] = set()
        self._shuffle: tuple[int, np.ndarray] | None = None

    def scan_index(self, position: int) -> int:
        """The scan at stream ``position``: every pass over the datalist is a fresh shuffle of it."""
        n = len(self.data)
        shuffle = position // n
        if self._shuffle is None or self._shuffle[0] != shuffle:
            self._shuffle = (shuffle, np.random.default_rng([self.seed, shuffle]).permutation(n))
        return int(self._shuffle[1][position % n])

    def _transform(self, position: int):
        index = self.scan_index(position)
        rng = np.random.default_rng([self.seed, position, 1])  # 1: the crops' stream, apart from the shuffles'
        for _ in range(self.max_consecutive_failures):
            set_rnd(self.transform, int(rng.integers(2**31)))
            try:
                return super()._transform(index)
            except Exception as err:  # noqa: BLE001 - any failure of one scan must not stop the run
                self._record(self.data[index], err)
                index = int(rng.integers(len(self.data)))
        raise RuntimeError(
            f"{self.max_consecutive_failures} scans in a row could not be used; see {self.skip_log} for the files "
            "and reasons. Check dataset_dir and datalist (or rebuild the cache with ctfm prepare-pretraining)."
        )

    def _record(self, item, err: Exception) -> None:
        source = str(item.get("image", item) if isinstance(item, dict) else item)
        cause = root_cause(err)
        reason = f"{type(cause).__name__}: {cause}".replace("\n", " ")
        if source in self._logged:
            return
        self._logged.add(source)
        logger.warning("skipping scan %s: %s", source, reason)
        self.skip_log.parent.mkdir(parents=True, exist_ok=True)
        new = not self.skip_log.exists()
        with open(self.skip_log, "a", newline="") as f:  # one short append per line: safe across workers
            writer = csv.writer(f)
            if new:
                writer.writerow(["file", "reason"])
            writer.writerow([source, reason])
