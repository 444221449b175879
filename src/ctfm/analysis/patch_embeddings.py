"""Patch-wise CT-FM embeddings: one 512-d vector per window of a sliding window over a volume.

The one place tools and bundles get patch embeddings. Two ways, on the same window grid:

- :func:`window_embeddings` (the paper's way): every window is cropped and passed through the
  encoder on its own (``SlidingWindowSplitter``-style, batched). Exact, but one encoder pass per
  window.
- :func:`pooled_window_embeddings` (fast): the encoder runs once over the whole volume (the
  ``SegResEncoder`` is fully convolutional; its last stage has stride 16) and each window's
  embedding is the average of the last-stage map over the window's cells (``avg_pool3d``). Windows
  are then multiples of 16 voxels; a stride finer than 16 needs ``16 / stride`` maps per axis, of
  copies shifted by the stride. A shift of 4 or 8 voxels moves the encoder's stride-4 or stride-8
  stage by whole cells, so those maps continue the unshifted pass from that stage (its last one or
  two levels, about a tenth of a pass) instead of running the whole encoder again. The map sees the
  whole scan, so its values differ a little from a crop's own embedding (context beyond the window);
  the best matches agree (tests and ``benchmarks/bench_search.py``).

Volumes are preprocessed ``(1, S, P, L)`` tensors (:func:`ctfm.transforms.ct_fm_transforms`), padded
with air (0 after HU scaling) at the end of each axis so the windows cover every voxel.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ctfm.analysis.scans import as_volume
from ctfm.networks import CTFMEmbedder, bf16_supported, find_encoder
from ctfm.registry import HU_MAX, HU_MIN

STAGE_STRIDE = 16  # voxels per cell of the last encoder stage (four stride-2 convolutions)
AGGREGATIONS = ("min", "mean", "max")
METHODS = ("windows", "pooled")  # each window through the encoder / pooled from one whole-volume pass
# The authors' embedding windows (scripts/3d_mir_generate_embeddings.py): 24 x 128 x 128, overlap 0.625.
DEFAULT_WINDOW = (24, 128, 128)
DEFAULT_OVERLAP = 0.625
PRECISIONS = ("fp32", "bf16")  # the encoder's arithmetic in the pooled method
BODY_HU = -500.0  # voxels above this are inside the body (not air, not lung parenchyma)


def stride_from_overlap(window: Sequence[int], overlap: float | Sequence[float]) -> tuple[int, ...]:
    """Window stride in voxels for a fractional ``overlap`` (0 <= overlap < 1), at least one voxel."""
    overlaps = [float(overlap)] * len(window) if np.isscalar(overlap) else [float(o) for o in overlap]
    if any(not 0 <= o < 1 for o in overlaps):
        raise ValueError(f"overlap must be within [0, 1), got {overlap}")
    return tuple(max(1, int(round(w * (1 - o)))) for w, o in zip(window, overlaps))


def covering_shape(shape: Sequence[int], window: Sequence[int], stride: Sequence[int]) -> tuple[int, ...]:
    """The smallest shape >= ``shape`` on which windows every ``stride`` voxels end exactly at the border."""
    return tuple(w + int(np.ceil(max(n - w, 0) / s)) * s for n, w, s in zip(shape, window, stride))


def pad_to(image: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Pad ``(C, S, P, L)`` with air (0) at the end of each axis up to ``shape``."""
    pad = [0, 0, 0, 0, 0, 0]
    for axis, (n, target) in enumerate(zip(image.shape[1:], shape)):
        pad[2 * (2 - axis) + 1] = max(int(target) - n, 0)
    return F.pad(image, pad, value=0.0) if any(pad) else image


def window_grid(shape: Sequence[int], window: Sequence[int], stride: Sequence[int]) -> np.ndarray:
    """``(N, 3)`` start voxels of the windows over a volume of ``covering_shape`` (C order: L fastest)."""
    full = covering_shape(shape, window, stride)
    axes = [np.arange(0, n - w + 1, s) for n, w, s in zip(full, window, stride)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def grid_shape(shape: Sequence[int], window: Sequence[int], stride: Sequence[int]) -> tuple[int, int, int]:
    """Windows per axis of :func:`window_grid`."""
    full = covering_shape(shape, window, stride)
    return tuple((n - w) // s + 1 for n, w, s in zip(full, window, stride))


@torch.no_grad()
def window_embeddings(
    model: nn.Module,
    image,
    window: Sequence[int] = DEFAULT_WINDOW,
    stride: Sequence[int] | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Embed every window crop on its own: ``(embeddings (N, 512), starts (N, 3))``.

    ``stride`` defaults to the authors' overlap of 0.625. The encoder runs in ``eval()`` mode.
    """
    stride = tuple(stride) if stride is not None else stride_from_overlap(window, DEFAULT_OVERLAP)
    embedder = (model if isinstance(model, CTFMEmbedder) else CTFMEmbedder(find_encoder(model))).to(device).eval()
    image = as_volume(image)
    starts = window_grid(image.shape[1:], window, stride)
    padded = pad_to(image, covering_shape(image.shape[1:], window, stride))
    out = []
    batches = range(0, len(starts), batch_size)
    for b in tqdm(batches, desc="window embeddings", unit="batch", disable=not progress or len(batches) < 2):
        crops = [padded[:, s : s + window[0], p : p + window[1], l : l + window[2]] for s, p, l in starts[b : b + batch_size]]
        out.append(embedder(torch.stack(crops).to(device)).cpu())
    return torch.cat(out).numpy(), starts


SHARED_LEVELS = (2, 3)  # encoder levels (strides 4 and 8) that the unshifted pass keeps for the shifted maps


def _encoder_input(image, device, precision) -> tuple[torch.Tensor, bool]:
    """``(1, 1, *shape)`` on ``device``, each axis padded with air to a multiple of 16, and whether bf16 autocast
    is on."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    image = as_volume(image)
    shape = [int(np.ceil(n / STAGE_STRIDE)) * STAGE_STRIDE for n in image.shape[1:]]
    x = pad_to(image, shape)[None].to(device)
    bf16 = precision == "bf16" and bf16_supported(x.device)
    # .to(), not .contiguous(): a one-channel volume already counts as channels-last contiguous
    return (x.to(memory_format=torch.channels_last_3d) if bf16 else x), bf16


def _run_levels(encoder, x: torch.Tensor, bf16: bool, after: int | None = None, keep=()) -> tuple[torch.Tensor, dict]:
    """``SegResEncoder``'s forward from the image (``after`` None) or from level ``after``'s output ``x``: the last
    stage as ``(512, ...)`` fp32 on the CPU, and the outputs of the levels in ``keep``, as they came."""
    kept = {}
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=bf16):
        if after is None:
            x, first = encoder.conv_init(x), 0
        else:
            x, first = encoder.layers[after]["downsample"](x), after + 1
        for level in range(first, len(encoder.layers)):
            x = encoder.layers[level]["blocks"](x)
            if level in keep:
                kept[level] = x
            if level < len(encoder.layers) - 1:
                x = encoder.layers[level]["downsample"](x)
    return x[0].float().contiguous().cpu(), kept


@torch.no_grad()
def feature_map(model: nn.Module, image, device: str | torch.device = "cpu", precision: str = "fp32") -> torch.Tensor:
    """The last encoder stage over the whole volume in one pass: ``(512, ceil(S/16), ceil(P/16), ceil(L/16))``.

    ``precision="bf16"`` runs the encoder in bfloat16 autocast on channels-last input where the device
    does bf16 natively (on this project's CPU ~2.8x faster than fp32; the best matches agree, tests); fp32 otherwise.
    """
    x, bf16 = _encoder_input(image, device, precision)
    return _run_levels(find_encoder(model).to(device).eval(), x, bf16)[0]


def shared_level(offset: Sequence[int]) -> int | None:
    """The deepest of :data:`SHARED_LEVELS` whose cells (``2 ** level`` voxels) ``offset`` moves by whole cells on every
    axis, or None (the unshifted pass itself, or an offset that needs a pass of its own)."""
    if not any(offset):
        return None
    fits = [level for level in SHARED_LEVELS if all(o % 2**level == 0 for o in offset)]
    return max(fits) if fits else None


@torch.no_grad()
def shifted_feature_map(model, image, offset, device="cpu", precision="fp32", maps: dict | None = None) -> torch.Tensor:
    """:func:`feature_map` of ``image`` from voxel ``offset`` on, kept in ``maps`` (when given): each map is made once.

    The key is the offset, the padded shape and the precision: that is the encoder's whole input, so a query box
    and a window grid over the same volume share their maps. An offset of whole stride-4 or stride-8 cells continues
    the unshifted pass (made first, and kept in ``maps`` with its :data:`SHARED_LEVELS`) from that level on, its
    output moved by the offset: the same arithmetic as a pass over the shifted copy, except within reach of the
    scan's start (where the copy sees its own zero padding and this map sees the voxels before the offset).
    """
    image = as_volume(image)
    shifted = image[:, offset[0]:, offset[1]:, offset[2]:]
    cells = tuple(int(np.ceil(n / STAGE_STRIDE)) for n in shifted.shape[1:])
    key = (tuple(int(o) for o in offset), cells, precision)
    if maps is not None and key in maps:
        return maps[key]
    maps = {} if maps is None else maps
    encoder = find_encoder(model).to(device).eval()
    level = shared_level(offset)
    if level is None:
        x, bf16 = _encoder_input(shifted, device, precision)
        fmap, kept = _run_levels(encoder, x, bf16, keep=SHARED_LEVELS if not any(offset) else ())
        for at, value in kept.items():  # the unshifted pass: what the shifted maps continue from
            maps[_level_key(at, cells, precision)] = value
    else:
        trunk_key = _level_key(level, tuple(int(np.ceil(n / STAGE_STRIDE)) for n in image.shape[1:]), precision)
        if trunk_key not in maps:
            shifted_feature_map(model, image, (0, 0, 0), device=device, precision=precision, maps=maps)
        cut = [o // 2**level for o in offset]
        trunk = maps[trunk_key][:, :, cut[0]:, cut[1]:, cut[2]:]
        bf16 = precision == "bf16" and bf16_supported(trunk.device)  # as the unshifted pass ran
        fmap = _run_levels(encoder, trunk, bf16, after=level)[0]
        fmap = fmap[:, : cells[0], : cells[1], : cells[2]]  # the shifted copy's own extent
    maps[key] = fmap
    return fmap


def _level_key(level: int, cells: tuple, precision: str) -> tuple:
    return ("level", level, cells, precision)


def encoder_maps_done(maps: dict) -> int:
    """How many last-stage maps (encoder passes, or shifted maps continued from one) ``maps`` holds."""
    return sum(1 for key in list(maps) if key[0] != "level")  # list(): a background pass may add one meanwhile


def check_fast_grid(window: Sequence[int], stride: Sequence[int]) -> None:
    """Raise unless the window is a multiple of 16 voxels and each stride divides 16 or is a multiple of it."""
    bad_w = [w for w in window if w % STAGE_STRIDE]
    bad_s = [s for s in stride if STAGE_STRIDE % s and s % STAGE_STRIDE]
    if bad_w or bad_s:
        raise ValueError(
            f"window {tuple(window)} / stride {tuple(stride)} do not fit the encoder's last stage (16 voxels per cell): "
            "the fast (pooled) embeddings need windows that are multiples of 16 and strides that divide 16 "
            "(1, 2, 4, 8) or are multiples of 16. Change the window/stride, or use the per-window method."
        )


def pass_offsets(stride: Sequence[int]) -> list[tuple[int, ...]]:
    """The shifts of the encoder passes that windows every ``stride`` voxels need (a stride under 16 takes ``16 / s``)."""
    return list(itertools.product(*[range(0, STAGE_STRIDE, s) if s < STAGE_STRIDE else [0] for s in stride]))


@torch.no_grad()
def pooled_window_embeddings(
    model: nn.Module,
    image,
    window: Sequence[int],
    stride: Sequence[int],
    device: str | torch.device = "cpu",
    progress: bool = True,
    precision: str = "fp32",
    maps: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Window embeddings pooled from whole-volume feature maps: same grid and order as :func:`window_embeddings`.

    Maps: one per combination of sub-cell offsets, ``prod(16 // s for s < 16)``; a stride of 16 or more takes one.
    Offsets of 4 or 8 voxels continue the unshifted pass (:func:`shifted_feature_map`); strides of 1 or 2 take a
    whole pass per offset. ``maps`` keeps them for the next call.
    """
    check_fast_grid(window, stride)
    image = as_volume(image)
    shape = tuple(image.shape[1:])
    padded = pad_to(image, covering_shape(shape, window, stride))
    cells = [w // STAGE_STRIDE for w in window]
    cell_stride = [max(1, s // STAGE_STRIDE) for s in stride]
    offsets = pass_offsets(stride)
    counts = grid_shape(shape, window, stride)
    maps = {} if maps is None else maps  # the shifted maps continue the unshifted pass
    result = np.zeros((*counts, 512), dtype=np.float32)
    for off in tqdm(offsets, desc="encoder passes", unit="pass", disable=not progress or len(offsets) < 2):
        fmap = shifted_feature_map(model, padded, off, device=device, precision=precision, maps=maps)
        pooled = F.avg_pool3d(fmap[None], kernel_size=cells, stride=cell_stride)[0]  # (512, a, b, c)
        # window index k along an axis with stride s < 16 starts at k * s = off + 16 * j  ->  k = (off + 16 j) / s
        index = [np.arange(o // s if s < STAGE_STRIDE else 0, n, STAGE_STRIDE // s if s < STAGE_STRIDE else 1)
                 for o, s, n in zip(off, stride, counts)]
        sizes = [min(len(i), m) for i, m in zip(index, pooled.shape[1:])]
        block = pooled[:, : sizes[0], : sizes[1], : sizes[2]].permute(1, 2, 3, 0).numpy()
        result[np.ix_(index[0][: sizes[0]], index[1][: sizes[1]], index[2][: sizes[2]])] = block
    return result.reshape(-1, 512), window_grid(shape, window, stride)


def aggregate(embeddings: np.ndarray, how: str = "min") -> np.ndarray:
    """One scan vector from its patch embeddings: element-wise min (the paper's 3D-MIR choice), mean or max."""
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}; choose one of {AGGREGATIONS}")
    return getattr(np, how)(embeddings, axis=0)


def cosine_similarity(query: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """Cosine similarity of one ``(512,)`` query with each row of ``(N, 512)``."""
    q = query / max(np.linalg.norm(query), 1e-12)
    e = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    return e @ q


def patch_embeddings(
    model: nn.Module,
    image,
    window: Sequence[int] = DEFAULT_WINDOW,
    stride: Sequence[int] | None = None,
    method: str = "windows",
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    progress: bool = True,
    **pooled_options,
) -> tuple[np.ndarray, np.ndarray]:
    """``(embeddings (N, 512), starts (N, 3))`` by ``method``: "windows" (each crop) or "pooled" (feature map;
    ``pooled_options``: ``precision``, ``maps`` of :func:`pooled_window_embeddings`)."""
    stride = tuple(stride) if stride is not None else stride_from_overlap(window, DEFAULT_OVERLAP)
    if method == "windows":
        return window_embeddings(model, image, window, stride, batch_size=batch_size, device=device, progress=progress)
    if method == "pooled":
        return pooled_window_embeddings(model, image, window, stride, device=device, progress=progress,
                                        **pooled_options)
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")


def windows_to_voxels(values: np.ndarray, starts: np.ndarray, window: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """A voxel map ``(C, *shape)`` from per-window values ``(N, C)``: each voxel gets the mean over the windows holding it."""
    values = np.asarray(values, dtype=np.float32).reshape(len(starts), -1)
    steps = _regular_steps(starts, window)
    if steps is not None:  # a regular grid: the map is constant on cells of one step, summed with running sums
        counts = [len(np.unique(starts[:, a])) for a in range(3)]
        total, count = values.reshape(*counts, -1), np.ones(counts, dtype=np.float32)
        for axis, (w, s) in enumerate(zip(window, steps)):
            total, count = _running_sum(total, w // s, axis), _running_sum(count, w // s, axis)
        cells = np.moveaxis(total / count[..., None], -1, 0)
        for axis, s in enumerate(steps):
            cells = np.repeat(cells, s, axis=axis + 1)
        return cells[:, : shape[0], : shape[1], : shape[2]]
    full = [int(starts[:, a].max()) + window[a] for a in range(3)]
    total = np.zeros((values.shape[1], *full), dtype=np.float32)
    count = np.zeros(full, dtype=np.float32)
    for (s, p, l), v in zip(starts, values):
        region = (slice(s, s + window[0]), slice(p, p + window[1]), slice(l, l + window[2]))
        total[(slice(None), *region)] += v[:, None, None, None]
        count[region] += 1
    out = total / np.maximum(count, 1)
    return out[:, : shape[0], : shape[1], : shape[2]]


def _regular_steps(starts: np.ndarray, window: Sequence[int]) -> list[int] | None:
    """The step per axis when ``starts`` is a full C-order grid from 0 whose steps divide the window, else None."""
    axes, steps = [], []
    for a, w in enumerate(window):
        u = np.unique(starts[:, a])
        s = int(u[1] - u[0]) if len(u) > 1 else int(w)
        if s <= 0 or w % s or not np.array_equal(u, np.arange(0, u[-1] + 1, s)):
            return None
        axes.append(u)
        steps.append(s)
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    return steps if grid.shape == starts.shape and np.array_equal(grid, starts) else None


def _running_sum(a: np.ndarray, k: int, axis: int) -> np.ndarray:
    """Sums of ``k`` consecutive entries along ``axis`` ending at each position, the array grown by ``k - 1`` there."""
    pad = [(0, 0)] * a.ndim
    pad[axis] = (0, k - 1)
    c = np.cumsum(np.pad(a, pad), axis=axis, dtype=np.float64)
    earlier = np.concatenate([np.zeros_like(np.take(c, range(k), axis=axis)),
                              np.take(c, range(c.shape[axis] - k), axis=axis)], axis=axis)  # c shifted by k
    return (c - earlier).astype(np.float32)


def window_body_fraction(image, starts: np.ndarray, window: Sequence[int]) -> np.ndarray:
    """Per window, the fraction of its voxels inside the body (above -500 HU) of a preprocessed volume."""
    body = as_volume(image)[0].numpy() > (BODY_HU - HU_MIN) / (HU_MAX - HU_MIN)  # the threshold on the 0..1 scale
    return np.array([body[s : s + window[0], p : p + window[1], l : l + window[2]].mean() for s, p, l in starts])


def window_centres(starts: np.ndarray, window: Sequence[int]) -> np.ndarray:
    """Voxel coordinates of the window centres (float, preprocessed grid)."""
    return starts + (np.asarray(window) - 1) / 2.0
