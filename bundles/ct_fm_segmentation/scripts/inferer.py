"""Sliding-window inference in bfloat16 autocast where the device runs it natively.

MONAI's evaluators only autocast on CUDA (``torch.autocast("cuda")``); on a CPU with AVX512-BF16 or
AMX, bf16 is also ~2x faster than fp32. So the autocast lives in the inferer, for any device.
"""

from __future__ import annotations

import torch
from monai.inferers import SlidingWindowInferer

PRECISIONS = ("bf16", "fp32")


def bf16_supported(device: torch.device | str) -> bool:
    """Whether ``device`` runs bfloat16 matrix multiplies natively (else autocast would only slow it down)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


class AutocastSlidingWindowInferer(SlidingWindowInferer):
    """``SlidingWindowInferer`` that runs the network under bf16 autocast (``precision="bf16"``) where supported.

    The stitched output is always float32. ``precision="fp32"`` is MONAI's plain behaviour.
    """

    def __init__(self, *args, precision: str = "bf16", **kwargs):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        super().__init__(*args, **kwargs)
        self.precision = precision

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs):
        use_bf16 = self.precision == "bf16" and bf16_supported(inputs.device)
        with torch.autocast(device_type=inputs.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = super().__call__(inputs, network, *args, **kwargs)
        return out.float() if isinstance(out, torch.Tensor) else out
