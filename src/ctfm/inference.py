"""Segmentation inference shared by the segmentation bundle's inference.json and ``ctfm segment``.

Sliding-window inference in bfloat16 autocast where the device runs it natively, channels-last.

MONAI's evaluators only autocast on CUDA (``torch.autocast("cuda")``); on a CPU with AVX512-BF16 or
AMX, bf16 is also faster than fp32. So the autocast lives in the inferer, for any device.

Each window is handed to the network in channels-last memory order (``torch.channels_last_3d``):
oneDNN's bf16 3-D convolutions run ~2.7x faster on it than on PyTorch's default order (SegResNetDS,
one 2 x 96 x 160 x 160 batch on 2 CPU cores: 20.0 s default, 7.5 s channels-last); only strides change, so
the network itself is left as it is. The two orders run different kernels, which round differently: the
outputs agree to float rounding in fp32 and to a few bf16 steps in bf16, where the label maps differ only at
near-ties of the two best classes (tests/test_segmentation_bundle.py states the tolerances).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer
from monai.transforms import MapTransform, SaveImaged

from ctfm.io import atomic_path, scan_id, strip_volume_suffix, write_text_atomic
from ctfm.networks import bf16_supported  # shared with the library's embedding search

PRECISIONS = ("bf16", "fp32")


class AutocastSlidingWindowInferer(SlidingWindowInferer):
    """``SlidingWindowInferer`` that runs the network under bf16 autocast (``precision="bf16"``) where
    supported, on channels-last windows (``channels_last=True``, 3-D images).

    The stitched output is always float32. ``precision="fp32", channels_last=False`` is MONAI's plain behaviour.
    """

    def __init__(self, *args, precision: str = "bf16", channels_last: bool = True, **kwargs):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        super().__init__(*args, **kwargs)
        self.precision, self.channels_last = precision, channels_last

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs):
        use_bf16 = self.precision == "bf16" and bf16_supported(inputs.device)
        if self.channels_last and inputs.ndim == 5:
            network = _ChannelsLastWindows(network)
        with torch.autocast(device_type=inputs.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = super().__call__(inputs, network, *args, **kwargs)
        return out.float() if isinstance(out, torch.Tensor) else out


class _ChannelsLastWindows:
    """Calls ``network`` on each window in channels-last memory order.

    ``.to(memory_format=...)``, not ``.contiguous(memory_format=...)``: a one-channel CT window already
    counts as channels-last contiguous, so ``contiguous`` would keep its strides and oneDNN its slow path.
    The output goes back to the default order before MONAI stitches it: one copy costs less than stitching
    118 channels from channels-last strides (151.7 s against 110.0 s a volume on 2 cores)."""

    def __init__(self, network):
        self.network = network

    def __call__(self, window: torch.Tensor, *args, **kwargs):
        return self.network(window.to(memory_format=torch.channels_last_3d), *args, **kwargs).contiguous()


def label_names_sidecar(label_map, saved: str | Path, source: str, label_names: Mapping) -> dict:
    """What ``<label map>.json`` holds: the map's file name, its source scan, every id's name and the ids present."""
    names = {str(k): v for k, v in label_names.items()}
    present = [int(i) for i in np.unique(np.asarray(label_map)) if i > 0]
    return {
        "label_map": Path(saved).name,
        "source": str(source),
        "labels": names,
        "present": {str(i): names.get(str(i), "?") for i in present},
    }


def sidecar_path(saved: str | Path) -> Path:
    """``<dir>/<name>.json`` beside the label map ``<dir>/<name>.nii.gz`` (or ``.dcm``)."""
    saved = Path(saved)
    return saved.with_name(strip_volume_suffix(saved.name) + ".json")


class AtomicSaveImaged(SaveImaged):
    """MONAI's ``SaveImaged``, with two rules of the project's outputs: each label map is named
    ``<scan id>_<postfix><ext>`` (:func:`ctfm.io.scan_id`, the name the overwrite check looked for), and it
    is written under a temporary name in its folder and renamed, so a kill never leaves a partial label map
    under the final name. The final path goes to the map's ``saved_to`` metadata.

    A subclass, so MONAI Label, which drops ``SaveImaged`` and writes the result itself, drops it too.
    """

    def __call__(self, data):
        d = dict(data)
        layout, ext = self.saver.folder_layout, self.saver.output_ext
        for key in self.key_iterator(d):
            source = d[key].meta["filename_or_obj"]
            final = Path(layout.output_dir) / f"{scan_id(source)}_{layout.postfix}{ext}"
            with atomic_path(final) as tmp:
                self.saver(img=d[key], filename=str(tmp)[: -len(ext)])  # SaveImage appends ext
            d[key].meta["saved_to"] = str(final)
        return d


class WriteLabelNamesd(MapTransform):
    """Write ``<label map>.json`` (:func:`label_names_sidecar`) next to each saved label map.

    A label map that was not saved (MONAI Label drops ``SaveImaged`` and writes the result itself) gets none.
    """

    def __init__(self, keys, label_names: Mapping, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.label_names = {str(k): v for k, v in label_names.items()}

    def __call__(self, data):
        for key in self.key_iterator(data):
            if "saved_to" not in data[key].meta:
                continue
            saved = data[key].meta["saved_to"]
            source = data[key].meta.get("filename_or_obj", "")
            sidecar = label_names_sidecar(data[key], saved, source, self.label_names)
            write_text_atomic(sidecar_path(saved), json.dumps(sidecar, indent=2))
        return data
