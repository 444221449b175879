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

``stitch="labels"`` (the bundle's default) returns the label map instead of the class scores: MONAI's
``sliding_window_inference`` keeps the weighted scores of every class over the whole volume in fp32 (118
channels: 5 GB for a 1.5 mm abdomen CT, 11.7 GB peak RSS with the rest), then the postprocessing takes
their argmax. :func:`stitch_labels` runs the same windows in the same order with the same weights and the
same additions, but keeps the scores only over a slab one window deep and writes each row of the label map
as soon as no later window reaches it; the label map equals the argmax of MONAI's output exactly. For a
``SegResNetDS`` (the bundle's network) it stitches less: the network returns its decoder's last features (32
channels, not 118 scores) and the final head, a 1 x 1 x 1 convolution, runs once per voxel on their weighted
mean, in fp32, when the row is written. The head is linear, so this is the head of MONAI's weighted mean of the
windows' scores up to float rounding (label maps differ only at near-ties of the two best classes: tests); at
the authors' overlap 0.625 each voxel lies in ~7 windows, so the head runs ~7x less and a window adds 32
channels instead of 118 (through the bundle CLI on 2 cores, overlap 0.625: 168.7 / 171.5 s before, 138.5 s after;
the slab takes 0.6 GB instead of 2.2 GB on the 1.5 mm sample CT). It also skips the deep-supervision heads that
``eval()`` computes and drops.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from monai.data import MetaTensor
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers import SlidingWindowInferer
from monai.inferers.utils import _get_scan_interval  # MONAI's window stride: the stitcher's windows are MONAI's
from monai.networks.nets import SegResNetDS
from monai.transforms import MapTransform, SaveImaged
from monai.utils import convert_to_dst_type, ensure_tuple_rep, fall_back_tuple

from ctfm.io import atomic_path, scan_id, strip_volume_suffix, write_text_atomic
from ctfm.networks import bf16_supported  # shared with the library's embedding search

PRECISIONS = ("bf16", "fp32")
STITCH_MODES = ("labels", "logits")


class AutocastSlidingWindowInferer(SlidingWindowInferer):
    """``SlidingWindowInferer`` that runs the network under bf16 autocast (``precision="bf16"``) where
    supported, on channels-last windows (``channels_last=True``, 3-D images).

    ``stitch="logits"``: the stitched class scores, always float32 (``precision="fp32", channels_last=False``
    is MONAI's plain behaviour). ``stitch="labels"``: their argmax, one channel (uint8 up to 256 classes),
    streamed by :func:`stitch_labels` in a fraction of the memory; the same label map.
    """

    def __init__(self, *args, precision: str = "bf16", channels_last: bool = True, stitch: str = "logits", **kwargs):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if stitch not in STITCH_MODES:
            raise ValueError(f"stitch must be one of {STITCH_MODES}, got {stitch!r}")
        super().__init__(*args, **kwargs)
        self.precision, self.channels_last, self.stitch = precision, channels_last, stitch

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs):
        use_bf16 = self.precision == "bf16" and bf16_supported(inputs.device)
        if self.channels_last and inputs.ndim == 5:  # streamed labels stitch channels-last outputs as they are
            network = _ChannelsLastWindows(network, default_order_output=self.stitch == "logits")
        with torch.autocast(device_type=inputs.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            if self.stitch == "labels":
                return self._stream_labels(inputs, network, *args, **kwargs)
            out = super().__call__(inputs, network, *args, **kwargs)
        return out.float() if isinstance(out, torch.Tensor) else out

    def _stream_labels(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        roi = fall_back_tuple(self.roi_size, inputs.shape[2:])
        weights = self.roi_weight_map
        if weights is None or tuple(weights.shape[-len(roi):]) != tuple(roi):  # MONAI computes it per call then
            weights = compute_importance_map(roi, mode=self.mode, sigma_scale=self.sigma_scale, device=inputs.device)
        images = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        segresnet = _segresnet_ds(network)
        with final_head_apart(segresnet) if segresnet is not None else nullcontext() as head:
            labels = torch.cat([
                stitch_labels(image[None], lambda w: network(w, *args, **kwargs), roi, self.sw_batch_size,
                              self.overlap, weights, padding_mode=self.padding_mode, cval=self.cval, head=head)
                for image in images
            ])  # fmt: skip
        if isinstance(inputs, MetaTensor):  # the input's metadata, as MONAI's inferer keeps it
            meta = MetaTensor([]).copy_meta_from(inputs, copy_attr=False)
            return convert_to_dst_type(labels, meta, dtype=labels.dtype)[0]
        return labels


def _segresnet_ds(network) -> SegResNetDS | None:
    """The ``SegResNetDS`` behind ``network`` (through the channels-last and DDP wrappers) when it is in ``eval()``
    and its final head is pointwise (so rows of it can run apart), else None."""
    for _ in range(4):  # through _ChannelsLastWindows, ctfm segment's progress reporter, DistributedDataParallel
        inner = getattr(network, "network", None) or getattr(network, "module", None)
        if inner is None:
            break
        network = inner
    if not isinstance(network, SegResNetDS) or network.training:
        return None
    head = network.up_layers[-1]["head"]
    return network if isinstance(head, nn.Conv3d) and head.kernel_size == (1, 1, 1) else None


@contextmanager
def final_head_apart(network: SegResNetDS):
    """While inside, ``network`` returns its decoder's last features instead of class scores, and computes none of
    the deep-supervision heads (``eval()`` drops their outputs anyway); yields the final head, to apply by rows."""
    level = network.up_layers[-1]
    head, dsdepth = level["head"], network.dsdepth
    level["head"], network.dsdepth = nn.Identity(), 1
    try:
        yield head
    finally:
        level["head"], network.dsdepth = head, dsdepth


def bf16_convolutions(network: nn.Module, precision: str) -> nn.Module:
    """For inference in bf16 (``precision`` "bf16" where the network's device runs it): the convolutions' weights kept
    in bf16, which autocast casts them to anyway, so the products are the same bit for bit (tests); the weights take
    half the memory and autocast keeps no bf16 copies of them (0.35 GB together for the whole-body network).
    Normalisation layers stay fp32. For inference only: training needs fp32 weights."""
    if precision != "bf16" or not bf16_supported(next(network.parameters()).device):
        return network
    for module in network.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                               nn.ConvTranspose3d)):
            module.to(torch.bfloat16)
    return network


def window_slices(image_size, roi_size, overlap) -> list[tuple[slice, ...]]:
    """MONAI's sliding-window grid over an image of ``image_size`` (padded to at least ``roi_size``, as MONAI
    pads it), in MONAI's order: the first spatial axis outermost, so the windows come in order of their start
    along it."""
    roi = fall_back_tuple(roi_size, image_size)
    size = [max(r, s) for r, s in zip(roi, image_size)]
    return dense_patch_slices(size, roi, _get_scan_interval(size, roi, len(roi), ensure_tuple_rep(overlap, len(roi))))


# Rows of a window weighted and added at a time: a bf16 output is weighted in an fp32 temporary of its size
# (MONAI's in-place product makes two, 4.6 GB for a 2 x 118 x 96 x 160 x 160 batch).
CHUNK_ROWS = 8


def _channels_last_only(tensor: torch.Tensor) -> bool:
    channels_last = tensor.ndim == 5 and tensor.is_contiguous(memory_format=torch.channels_last_3d)
    return channels_last and not tensor.is_contiguous()


def _ring_rows(start: int, stop: int, depth: int) -> list[tuple[slice, slice]]:
    """Rows ``start .. stop - 1`` of the volume as (rows of a ring buffer ``depth`` deep, rows of the volume)
    pieces: two where the rows wrap around the ring's end."""
    if stop - start > depth:
        raise AssertionError(f"rows {start}..{stop} do not fit a ring of {depth}")  # a window grid MONAI never makes
    pieces = []
    while start < stop:
        at = start % depth
        n = min(stop - start, depth - at)
        pieces.append((slice(at, at + n), slice(start, start + n)))
        start += n
    return pieces


def stitch_labels(image: torch.Tensor, predictor, roi_size, sw_batch_size: int, overlap, importance_map: torch.Tensor,
                  padding_mode: str = "constant", cval: float = 0.0, head=None) -> torch.Tensor:
    """The argmax over classes of MONAI's ``sliding_window_inference(image, ...)`` output (one image,
    ``1 x C x *spatial``), computed without holding the class scores of the whole volume.

    The same windows (:func:`window_slices`), in the same batches of ``sw_batch_size``, weighted by the same
    ``importance_map`` with the same rounding: each output is multiplied by the map and rounded to the
    network's dtype (MONAI multiplies in place; here a few rows at a time, which changes no element), then
    added in window order to fp32 sums; the weights add up the same way
    into a count. So each voxel's weighted mean is bit for bit MONAI's. The sums and counts are kept for a
    slab of rows along the first spatial axis one window deep (a ring buffer): MONAI's windows come in order
    of their start along that axis, so when a window starts further on, no later window reaches the rows
    before its start; they are divided, their argmax is written to the label map, and their rows of the ring
    are cleared for reuse. Returns ``1 x 1 x *spatial`` labels (uint8 up to 256 classes, else int16).

    ``head``: a 1 x 1 x 1 convolution that turns the predictor's output (features) into class scores (see
    :func:`final_head_apart`). The features are weighted and added in fp32 instead of the scores, and the head
    runs in fp32 once per voxel on their weighted mean as its row is written: by linearity the same scores as
    MONAI's weighted mean of the head's outputs, up to float rounding (fp32 instead of the network's dtype).
    """
    spatial = image.shape[2:]
    roi = fall_back_tuple(roi_size, spatial)
    pad = []  # as MONAI pads an image smaller than a window: centred, last axis first
    for size, r in zip(reversed(spatial), reversed(roi)):
        diff = max(r - size, 0)
        pad += [diff // 2, diff - diff // 2]
    if any(pad):
        image = F.pad(image, pad=pad, mode=padding_mode, value=cval)
    size = image.shape[2:]
    slices = window_slices(size, roi, overlap)
    depth, dtype = roi[0], image.dtype
    weights = importance_map.to(device=image.device, dtype=dtype).reshape(1, 1, *roi)
    counts = torch.zeros(1, depth, *size[1:], dtype=dtype, device=image.device)
    sums, labels, written = None, None, 0  # rows before `written` are in the label map

    scores_of = None if head is None else pointwise_head_fp32(head)

    def write_rows(upto: int) -> None:
        for row in range(written, upto):  # one row at a time: the quotient of all channels is a temporary
            at = row % depth
            mean = sums[:, at] / counts[:, at]
            labels[row] = (mean if head is None else scores_of(mean)).argmax(0).to(labels.dtype)
            sums[:, at], counts[:, at] = 0, 0

    for first in range(0, len(slices), sw_batch_size):
        batch = slices[first : first + sw_batch_size]
        windows = torch.cat([image[(slice(None), slice(None), *s)] for s in batch])
        out = predictor(windows)
        if not isinstance(out, torch.Tensor) or tuple(out.shape[2:]) != tuple(roi):
            raise ValueError("stitch='labels' needs a network that returns one tensor of class scores at the window's "
                             f"size {tuple(roi)}; use stitch='logits' for other outputs.")
        if sums is None:  # in the output's memory order (channels-last windows: channels innermost), so adding is fast
            layout = torch.channels_last_3d if _channels_last_only(out) else torch.contiguous_format
            sums = torch.empty(1, out.shape[1], depth, *size[1:], dtype=dtype if head is None else torch.float32,
                               device=image.device, memory_format=layout)[0].zero_()
            classes = out.shape[1] if head is None else head.out_channels
            labels = torch.zeros(*size, dtype=torch.uint8 if classes <= 256 else torch.int16, device=image.device)
        for index, window in enumerate(batch):
            start = window[0].start
            if start > written:  # no later window reaches the rows before this one's start
                write_rows(start)
                written = start
            for chunk in range(start, window[0].stop, CHUNK_ROWS):
                for ring, rows in _ring_rows(chunk, min(chunk + CHUNK_ROWS, window[0].stop), depth):
                    part = slice(rows.start - start, rows.stop - start)
                    scores = out[index, :, part]  # class scores, or with `head` the features it maps
                    weighted = scores.float()  # a copy of a bf16 output; an fp32 one itself
                    weighted *= weights[0, :, part]
                    if head is None:  # MONAI multiplies in place, in the network's dtype: the same rounding
                        weighted = weighted.to(scores.dtype)
                    sums[(slice(None), ring, *window[1:])] += weighted
                    counts[(slice(None), ring, *window[1:])] += weights[0, :, part]
        del out, scores, weighted  # before the next batch's output exists
    write_rows(size[0])
    if any(pad):  # back to the image's own size, as MONAI crops
        labels = labels[tuple(slice(pad[2 * i], pad[2 * i] + n) for i, n in enumerate(reversed(spatial)))[::-1]]
    return labels[None, None]


def pointwise_head_fp32(head: nn.Conv3d):
    """``head`` (a 1 x 1 x 1 convolution) as a function from ``C x *spatial`` features to class scores, in fp32
    whatever its weights' dtype and outside autocast: the scores' argmax is taken right after, and bf16 scores
    (8 significant bits) would tie often among 118 classes."""
    if head.kernel_size != (1, 1, 1) or head.groups != 1:
        raise ValueError(f"the head must be a pointwise convolution, got {head}")
    weight = head.weight.detach().float().flatten(1)  # classes x features
    bias = None if head.bias is None else head.bias.detach().float()

    def scores(features: torch.Tensor) -> torch.Tensor:
        with torch.autocast(features.device.type, enabled=False):
            return F.linear(features.float().movedim(0, -1), weight, bias).movedim(-1, 0)

    return scores


class _ChannelsLastWindows:
    """Calls ``network`` on each window in channels-last memory order.

    ``.to(memory_format=...)``, not ``.contiguous(memory_format=...)``: a one-channel CT window already
    counts as channels-last contiguous, so ``contiguous`` would keep its strides and oneDNN its slow path.
    With ``default_order_output``, the output goes back to the default order before MONAI stitches it: one
    copy costs less than stitching 118 channels from channels-last strides (151.7 s against 110.0 s a volume
    on 2 cores). :func:`stitch_labels` needs no copy: its buffer takes the output's memory order."""

    def __init__(self, network, default_order_output: bool = True):
        self.network, self.default_order_output = network, default_order_output

    def __call__(self, window: torch.Tensor, *args, **kwargs):
        out = self.network(window.to(memory_format=torch.channels_last_3d), *args, **kwargs)
        return out.contiguous() if self.default_order_output else out


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
