"""The costly per-view augmentations, applied to a whole batch of views at once on the training device.

Histogram shift and Gaussian smoothing cost ~20 ms each per 24 x 128 x 128 view on one CPU core:
most of the input pipeline. Done here, in the trainer, on the batch already on the GPU, they cost
next to nothing and leave the DataLoader workers with reading, cropping, resizing and flipping.

Each view still gets its own random draw, with MONAI's distributions and maths:
``RandHistogramShift(num_control_points, prob)`` (control points on the view's own min..max,
piecewise-linear map as MONAI's ``interp``) and ``RandGaussianSmooth(sigma_x, sigma_y, sigma_z, prob)``
(sigma per axis ~ U(sigma), MONAI ``gaussian_1d`` kernels, erf approximation, truncated at 4 sigma,
zero padding). ``tests/test_pretrain.py`` checks both against MONAI's own transforms.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.layers.convutils import gaussian_1d
from monai.transforms import Randomizable

TRUNCATED = 4.0  # MONAI GaussianFilter default


def histogram_shift(views: torch.Tensor, floating: torch.Tensor) -> torch.Tensor:
    """Map each view ``(N, ...)`` through its piecewise-linear curve: reference points evenly spaced over
    the view's min..max go to ``floating`` (``(N, K)``, 0..1, increasing, 0 and 1 at the ends) x that range."""
    flat = views.reshape(len(views), -1)
    low, high = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    span = high - low
    reference = torch.linspace(0, 1, floating.shape[1], device=views.device, dtype=views.dtype)
    xp = low + reference * span
    fp = low + floating.to(views) * span
    slope = (fp[:, 1:] - fp[:, :-1]) / (xp[:, 1:] - xp[:, :-1])
    offset = fp[:, :-1] - slope * xp[:, :-1]
    index = (torch.searchsorted(xp.contiguous(), flat.contiguous()) - 1).clamp(0, slope.shape[1] - 1)
    shifted = slope.gather(1, index) * flat + offset.gather(1, index)
    constant = span[:, 0] == 0  # MONAI leaves a constant image as it is
    shifted[constant] = flat[constant]
    return shifted.reshape(views.shape)


def gaussian_smooth(views: torch.Tensor, sigmas: np.ndarray) -> torch.Tensor:
    """Smooth each view ``(N, 1, D, H, W)`` with its own per-axis ``sigmas`` (``(N, 3)``): one grouped conv per axis.

    Shorter kernels are zero-padded to the longest one, which equals convolving with the short kernel
    on a zero-padded image, as MONAI's ``separable_filtering`` does.
    """
    n = len(views)
    out = views.reshape(1, n, *views.shape[2:])  # views as channels: one group each
    for axis in range(3):
        kernels = [gaussian_1d(float(s), truncated=TRUNCATED, approx="erf") for s in sigmas[:, axis]]
        size = max(len(k) for k in kernels)
        weight = torch.zeros(n, size, dtype=views.dtype)
        for i, k in enumerate(kernels):
            start = (size - len(k)) // 2
            weight[i, start : start + len(k)] = k
        shape, padding = [n, 1, 1, 1, 1], [0, 0, 0]
        shape[2 + axis], padding[axis] = size, (size - 1) // 2
        out = F.conv3d(out, weight.reshape(shape).to(views.device), padding=padding, groups=n)
    return out.reshape(views.shape)


class BatchedViewAugmentation(Randomizable):
    """``(..., 1, D, H, W)`` views -> the same shape, each view histogram-shifted and smoothed at random.

    Args:
        histogram_prob, num_control_points: as MONAI ``RandHistogramShift`` (paper: 5 points, p 0.5).
        smooth_prob, sigma: as MONAI ``RandGaussianSmooth`` with the same range on every axis (p 0.5,
            sigma 0.25..1.5, MONAI's default).
        seed: of the random draws (give each DDP process its own). The trainer reseeds it with
            :meth:`for_iteration` before each batch, so a resumed run draws what a run never stopped would.
    """

    def __init__(self, histogram_prob: float = 0.5, num_control_points: int = 5, smooth_prob: float = 0.5,
                 sigma: Sequence[float] = (0.25, 1.5), seed: int = 0):
        if num_control_points < 3:
            raise ValueError(f"num_control_points must be at least 3 (two ends and one moving point), got {num_control_points}")
        self.histogram_prob, self.num_control_points = float(histogram_prob), int(num_control_points)
        self.smooth_prob, self.sigma = float(smooth_prob), tuple(float(s) for s in sigma)
        self.seed = int(seed)
        self.set_random_state(seed)

    def for_iteration(self, iteration: int) -> BatchedViewAugmentation:
        """The draws of training iteration ``iteration``: seeded by (seed, iteration) alone."""
        self.set_random_state(state=np.random.RandomState([self.seed, int(iteration)]))
        return self

    def floating_points(self, n: int) -> np.ndarray:
        """``(n, K)`` control points drawn as MONAI does: each inner point ~ U(previous, next reference)."""
        points = np.tile(np.linspace(0, 1, self.num_control_points), (n, 1))
        for i in range(1, self.num_control_points - 1):
            points[:, i] = self.R.uniform(points[:, i - 1], points[:, i + 1])
        return points

    @torch.no_grad()
    def __call__(self, views: torch.Tensor) -> torch.Tensor:
        flat = views.reshape(-1, 1, *views.shape[-3:])
        n = len(flat)
        shift = np.flatnonzero(self.R.random_sample(n) < self.histogram_prob)
        floating = self.floating_points(len(shift))
        smooth = np.flatnonzero(self.R.random_sample(n) < self.smooth_prob)
        sigmas = self.R.uniform(*self.sigma, size=(len(smooth), 3))
        out = flat.clone()
        if len(shift):
            index = torch.as_tensor(shift, device=flat.device)
            out[index] = histogram_shift(out[index], torch.as_tensor(floating))
        if len(smooth):
            index = torch.as_tensor(smooth, device=flat.device)
            out[index] = gaussian_smooth(out[index], sigmas)
        return out.reshape(views.shape)
