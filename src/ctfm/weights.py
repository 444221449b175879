"""Read and write CT-FM weights in every form a user holds, strictly and safely.

Forms read (:func:`read_state_dict`):

- a folder in the released Hugging Face layout: ``config.json`` + ``model.safetensors``
  (``project-lighter/ct_fm_feature_extractor``; also what :func:`save_pretrained` writes);
- a bare ``.safetensors`` file;
- a ``torch.save``-d state dict (``.pt``/``.pth``/``.ckpt``/``.bin``): a plain ``SegResEncoder`` or a
  ``SegResNetDS`` (``encoder.`` prefix), a Lightning/lighter checkpoint (``state_dict`` with
  ``model.backbone.`` and sometimes ``_orig_mod.``), a MONAI bundle ``models/model.pt`` (or the bundle
  folder itself).

Pickled files are read with ``torch.load(weights_only=True)``: a file that holds Python objects
beyond tensors is refused with our own message, never unpickled (and torch's hint to retry with
``weights_only=False`` is not passed on).

Where a CT-FM embedding is promised (:func:`load_pretrained`), a folder whose ``config.json``
describes another topology (``init_filters`` 16, say) is refused before anything is built.

Loads are strict. :func:`load_encoder_weights` takes the encoder part of the file (decoder and
projection-head tensors are set aside by name, and logged) and requires every encoder tensor to be
present with the right shape, or stops with a :class:`WeightLoadError` that names the file, counts
and the first keys, and diagnoses the usual causes (instance norm, a 2-D network, another
``init_filters``, another ``blocks_down``).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ctfm.io import file_sha256, user_mode
from ctfm.networks import build_segmentation_network, find_encoder
from ctfm.registry import CONFIG_FILENAME, EMBEDDING_DIM, ENCODER_CONFIG, ENCODER_NORM, WEIGHTS_FILENAME

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl")
# Keys that wrap a state dict inside a checkpoint, in the order they are tried.
CHECKPOINT_CONTAINERS = ("state_dict", "model", "network", "model_state_dict", "net", "encoder")
# Wrapper segments that carry no meaning for the weights: torch.compile and DataParallel/DDP.
WRAPPER_SEGMENTS = ("_orig_mod.", "module.")
ENCODER_ANCHOR = "conv_init.weight"  # the first tensor of every SegResEncoder
ENCODER_ARGS = ("spatial_dims", "in_channels", "init_filters", "blocks_down", "norm", "act", "anisotropic_scales")
SHOW = 5  # keys shown per list in an error message


class WeightLoadError(ValueError):
    """Weights that cannot be read or do not fit the network. The message says which file, why, and the fix."""


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


def resolve_weights_file(path: str | os.PathLike) -> Path:
    """The file that holds the tensors: the path itself, or the weights file inside a folder."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"CT-FM weights not found: {path}. Give a released-format folder (config.json + model.safetensors), "
            "a .safetensors file, a .pt/.ckpt state dict or a MONAI bundle folder."
        )
    if path.is_file():
        return path
    for candidate in (WEIGHTS_FILENAME, "models/model.safetensors", "models/model.pt", "model.pt"):
        if (path / candidate).is_file():
            return path / candidate
    found = sorted(p.name for p in path.iterdir())[:10]
    raise WeightLoadError(
        f"{path} is a folder without weights: expected {WEIGHTS_FILENAME} (released layout) or models/model.pt "
        f"(MONAI bundle); it holds {found}."
    )


def weights_sha256(path: str | os.PathLike) -> str:
    """The identity of weights as results record it: sha256 of the file the tensors are read from."""
    return file_sha256(resolve_weights_file(path))


def read_state_dict(path: str | os.PathLike, shapes_only: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of a weights file or folder, as a flat ``name -> tensor`` dict on the CPU.

    ``shapes_only``: tensors on the ``meta`` device, which hold shapes and no values; the values are
    not read (safetensors header, memory-mapped torch archive), so a check costs no load.
    """
    file = resolve_weights_file(path)
    if file.suffix == ".safetensors" or _looks_like_safetensors(file):
        try:
            if shapes_only:
                with safe_open(str(file), framework="pt") as f:
                    return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
            return load_file(str(file), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise WeightLoadError(
                f"Cannot read {file}: {err}. The file is truncated or not a safetensors file; download it again."
            ) from err
    try:
        mmap = shapes_only and zipfile.is_zipfile(file)  # a memory map reads no values (zip archives only)
        obj = torch.load(str(file), map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file
        if isinstance(err, pickle.UnpicklingError) and "weights only load failed" in str(err).lower():
            # torch's own text suggests weights_only=False, the one thing not to do with an unknown file:
            # our message replaces it, and the chain is cut so no traceback shows it either.
            needs = re.search(r"GLOBAL ([\w.]+)", str(err))
            raise WeightLoadError(
                f"{file} holds Python objects besides tensors{f' (it needs {needs.group(1)})' if needs else ''}, "
                "or is a damaged legacy checkpoint. Reading it would mean unpickling, which can run code, so it is "
                "refused. Only if you trust where the file came from, extract its state_dict once, on a machine "
                "where running its code is acceptable, with torch.save(state_dict, 'weights.pt') (a file of tensors "
                "only), and give weights.pt instead."
            ) from None
        raise WeightLoadError(
            f"Cannot read {file}: {type(err).__name__}: {err}. The file is truncated, corrupt or not a PyTorch "
            f"checkpoint (supported: {WEIGHTS_FILENAME} folders, .safetensors, {', '.join(PICKLE_SUFFIXES)})."
        ) from err
    tensors = _unwrap_state_dict(obj, file)
    return {k: torch.empty(v.shape, device="meta") for k, v in tensors.items()} if shapes_only else tensors


def _looks_like_safetensors(file: Path) -> bool:
    """safetensors files start with an 8-byte header length and then the JSON header."""
    with open(file, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < file.stat().st_size


def _unwrap_state_dict(obj, file: Path) -> dict[str, torch.Tensor]:
    """Find the flat tensor dict inside a checkpoint (Lightning ``state_dict``, ``{"model": ...}``...)."""
    if isinstance(obj, nn.Module):  # cannot happen with weights_only, kept for clarity of the contract
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(obj) / 2:
            return dict(tensors)
        for key in CHECKPOINT_CONTAINERS:
            if isinstance(obj.get(key), Mapping):
                return _unwrap_state_dict(obj[key], file)
        raise WeightLoadError(
            f"{file} is a checkpoint without a state dict: top-level keys {sorted(map(str, obj))[:10]}; "
            f"expected tensors or one of {CHECKPOINT_CONTAINERS}."
        )
    raise WeightLoadError(f"{file} holds a {type(obj).__name__}, not a state dict of tensors.")


def strip_wrappers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop ``_orig_mod.`` (torch.compile) and ``module.`` (DDP) wherever they occur in a key."""
    pattern = re.compile("|".join(re.escape(s) for s in WRAPPER_SEGMENTS))
    return {pattern.sub("", k): v for k, v in state_dict.items()}


def encoder_state_dict(
    state_dict: Mapping[str, torch.Tensor], source: str | os.PathLike = "<state dict>", prefix: str | None = None
) -> dict[str, torch.Tensor]:
    """The ``SegResEncoder`` tensors of a state dict, with their plain names.

    The encoder is found by its first tensor, ``conv_init.weight``: whatever stands before it
    (``""``, ``encoder.``, ``model.backbone.``, ``trunk.encoder.``...) is the prefix, unless ``prefix``
    is given. Tensors outside the encoder (decoder, projection head) are set aside and logged.
    """
    state_dict = strip_wrappers(state_dict)
    if prefix is None:
        prefixes = _encoder_prefixes(state_dict)
        if not prefixes:
            raise WeightLoadError(f"{source} holds no SegResEncoder: {_diagnose_foreign(state_dict)}")
        if len(prefixes) > 1:
            raise WeightLoadError(
                f"{source} holds {len(prefixes)} encoders, under the prefixes {prefixes}. "
                "Choose one with prefix=... (CLI: --prefix)."
            )
        prefix = prefixes[0]
    encoder = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not encoder:
        raise WeightLoadError(f"{source} has no tensor under the prefix {prefix!r}.")
    ignored = sorted({_group(k) for k in state_dict if not k.startswith(prefix)})
    if ignored:
        logger.info("%s: using the encoder under %r; set aside %s", source, prefix, ", ".join(ignored))
    return encoder


def _encoder_prefixes(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """What stands before ``conv_init.weight`` in each key that ends with it: one prefix per encoder."""
    return sorted({k[: -len(ENCODER_ANCHOR)] for k in state_dict if k.endswith(ENCODER_ANCHOR)})


def _group(key: str) -> str:
    """``up_layers.3.head.weight`` -> ``up_layers.*``: a short name for a family of set-aside keys."""
    parts = key.split(".")
    head = [p for p in parts[:-1] if not p.isdigit()][:2]
    return ".".join(head or parts[:1]) + ".*"


def _diagnose_foreign(state_dict: Mapping[str, torch.Tensor]) -> str:
    keys = list(state_dict)
    if any(k.endswith("convInit.conv.weight") for k in keys):
        return (
            "it is a MONAI SegResNet (convInit/down_layers), a different network from SegResNetDS/SegResEncoder; "
            "its weights cannot be used as CT-FM weights."
        )
    if any("patch_embed" in k or "swinViT" in k for k in keys):
        return "it looks like a Swin transformer (SwinUNETR), not the CT-FM SegResEncoder."
    return f"no key ends with {ENCODER_ANCHOR!r}; first keys: {keys[:SHOW]}."


def infer_encoder_config(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """What architecture a plain ``SegResEncoder`` state dict was saved from (for diagnoses)."""
    conv = state_dict.get(ENCODER_ANCHOR)
    config: dict = {}
    if conv is not None:
        config.update(spatial_dims=conv.ndim - 2, in_channels=int(conv.shape[1]), init_filters=int(conv.shape[0]))
    blocks: dict[int, set[int]] = {}
    for key in state_dict:
        m = re.match(r"layers\.(\d+)\.blocks\.(\d+)\.", key)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if blocks:
        config["blocks_down"] = [len(blocks.get(i, ())) for i in range(max(blocks) + 1)]
    norm_keys = [k for k in state_dict if ".norm" in k]
    if any(k.endswith("running_mean") for k in norm_keys):
        config["norm"] = "batch"
    elif norm_keys:
        config["norm"] = "instance or group (affine, no running statistics)"
    elif blocks:
        config["norm"] = "instance without affine parameters (no norm tensors at all)"
    return config


# ----------------------------------------------------------------------------------------------
# Loading into networks
# ----------------------------------------------------------------------------------------------


def load_encoder_weights(
    model: nn.Module, path: str | os.PathLike, prefix: str | None = None, expand_input_channels: bool = False
) -> nn.Module:
    """Load CT-FM encoder weights from ``path`` into the ``SegResEncoder`` inside ``model``, strictly.

    ``model`` is a ``SegResEncoder``, a ``SegResNetDS`` (its decoder stays as it is), a
    :class:`~ctfm.networks.CTFMEmbedder`, a classifier, or any module with exactly one
    ``SegResEncoder`` in it. Returns ``model``.

    ``expand_input_channels``: CT-FM's first convolution takes one channel. With this option, 1-channel
    weights also go into an encoder whose first convolution takes C > 1 channels (the triage bundle's
    head-CT windows as channels): the kernel is repeated over the C channels and divided by C, so C
    equal channels give the 1-channel encoder's response. The authors never needed it (they join the
    windows along a spatial axis and keep one channel); without the option the mismatch is an error.
    """
    encoder = find_encoder(model)
    source = resolve_weights_file(path)
    weights = _fitting_encoder_weights(encoder, source, prefix, expand_input_channels)
    encoder.load_state_dict(weights, strict=True)
    logger.info("Loaded %d encoder tensors from %s", len(weights), source)
    return model


def check_encoder_weights(
    model: nn.Module, path: str | os.PathLike, prefix: str | None = None, expand_input_channels: bool = False
) -> Path:
    """Check that :func:`load_encoder_weights` would load ``path`` into ``model``, from the tensor shapes alone:
    no value is read, and ``model`` may live on the ``meta`` device. Raises what the load would raise;
    returns the weights file."""
    source = resolve_weights_file(path)
    _fitting_encoder_weights(find_encoder(model), source, prefix, expand_input_channels, shapes_only=True)
    return source


def _fitting_encoder_weights(
    encoder: nn.Module, source: Path, prefix: str | None, expand_input_channels: bool, shapes_only: bool = False
) -> dict[str, torch.Tensor]:
    """The encoder tensors of ``source``, checked to fit ``encoder`` exactly (:class:`WeightLoadError` otherwise)."""
    weights = encoder_state_dict(read_state_dict(source, shapes_only), source, prefix)
    if expand_input_channels:
        weights = expand_first_kernel(weights, encoder.conv_init.in_channels)
    _check_fits(encoder, weights, source, what="the CT-FM encoder")
    return weights


def expand_first_kernel(weights: Mapping[str, torch.Tensor], in_channels: int) -> dict[str, torch.Tensor]:
    """1-channel encoder weights for ``in_channels`` channels: the first kernel repeated and divided by their number.

    Weights that already take ``in_channels``, or that take several channels, are returned unchanged
    (a real mismatch is then reported by the strict load).
    """
    weights = dict(weights)
    kernel = weights.get(ENCODER_ANCHOR)
    if kernel is not None and kernel.shape[1] == 1 and in_channels > 1:
        weights[ENCODER_ANCHOR] = kernel.repeat(1, in_channels, *([1] * (kernel.ndim - 2))) / in_channels
    return weights


def load_ct_fm_weights(model: nn.Module, ct_fm_weights: str | os.PathLike | None) -> nn.Module:
    """The bundles' ``ct_fm_weights`` setting: ``""`` (or ``None``) keeps the random initialisation; a path is
    loaded into the encoder of ``model`` by :func:`load_encoder_weights`, strictly, with the first kernel
    expanded when the network takes several input channels. Returns ``model``.
    """
    if not ct_fm_weights:
        return model
    return load_encoder_weights(model, ct_fm_weights, expand_input_channels=True)


def load_network_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a whole network's weights (e.g. the released whole-body ``SegResNetDS``), strictly.

    Wrapper segments (``_orig_mod.``, ``module.``) and one leading prefix shared by every key that
    the network lacks (``model.``, ``network.``...) are removed first.
    """
    source = resolve_weights_file(path)
    weights = strip_wrappers(read_state_dict(source))
    expected = model.state_dict()
    if not set(weights) & set(expected):
        first = next(iter(weights), "")
        lead = first.split(".", 1)[0] + "." if "." in first else ""
        if lead and all(k.startswith(lead) for k in weights):
            weights = {k[len(lead) :]: v for k, v in weights.items()}
    _check_fits(model, weights, source, what=type(model).__name__)
    model.load_state_dict(weights, strict=True)
    return model


def _check_fits(module: nn.Module, weights: Mapping[str, torch.Tensor], source, what: str) -> None:
    expected = module.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    misshaped = [
        f"{k}: file {list(weights[k].shape)} vs network {list(v.shape)}"
        for k, v in expected.items()
        if k in weights and weights[k].shape != v.shape
    ]
    if not (missing or unexpected or misshaped):
        return
    lines = [f"{source} does not fit {what}:"]
    for title, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if keys:
            more = f", ... ({len(keys) - SHOW} more)" if len(keys) > SHOW else ""
            lines.append(f"  {len(keys)} {title} key(s): {', '.join(keys[:SHOW])}{more}")
    diagnosis = _diagnose_mismatch(module, weights)
    if diagnosis:
        lines.append(f"Diagnosis: {diagnosis}")
    lines.append(
        "Nothing was loaded. Use weights saved from the same architecture, or build the network to match the file."
    )
    raise WeightLoadError("\n".join(lines))


def _diagnose_mismatch(module: nn.Module, weights: Mapping[str, torch.Tensor]) -> str:
    """Name the architecture difference behind a key mismatch, when the tensors reveal it."""
    try:
        encoder = find_encoder(module)
    except ValueError:
        return ""
    enc_weights = weights
    if module is not encoder:  # whole-network load: compare the encoder parts
        prefixes = _encoder_prefixes(weights)
        prefix = prefixes[0] if len(prefixes) == 1 else "encoder."
        enc_weights = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
        if len(prefixes) == 1 and len(enc_weights) == len(weights):
            return (
                f"the file holds only an encoder ({len(weights)} SegResEncoder tensors"
                f"{f' under {prefix!r}' if prefix else ''}, no decoder): encoder-only weights, such as CT-FM's "
                f"pretrained encoder, not a whole {type(module).__name__}. Give them as the encoder initialisation "
                "(load_encoder_weights; the bundles' ct_fm_weights), or give the trained network's weights here"
            )
    have, want = infer_encoder_config(enc_weights), infer_encoder_config(encoder.state_dict())
    notes = []
    if have.get("spatial_dims") not in (None, want.get("spatial_dims")):
        notes.append(f"the file holds a {have['spatial_dims']}-D network; CT-FM is 3-D")
    for arg in ("in_channels", "init_filters", "blocks_down", "norm"):
        if arg in have and have[arg] != want.get(arg):
            notes.append(f"{arg} is {have[arg]} in the file but {want.get(arg)} in the network")
    if not notes and module is not encoder:
        notes.append("the encoder matches; the decoder differs (another number of classes or deep-supervision depth)")
    return "; ".join(notes)


# ----------------------------------------------------------------------------------------------
# The released layout: config.json + model.safetensors
# ----------------------------------------------------------------------------------------------


def encoder_config(encoder: nn.Module) -> dict:
    """The ``config.json`` of an encoder: the released four keys, plus ``norm`` when it is not batch."""
    inferred = infer_encoder_config(find_encoder(encoder).state_dict())
    config = {k: inferred[k] for k in ENCODER_CONFIG}
    if inferred.get("norm") != ENCODER_NORM:
        config["norm"] = "instance"
    return config


def save_pretrained(
    model: nn.Module, folder: str | os.PathLike, overwrite: bool = False, model_card: str | None = None
) -> Path:
    """Write the encoder inside ``model`` in the released CT-FM layout, exactly as
    huggingface_hub's ``PyTorchModelHubMixin.save_pretrained`` lays it out: ``model.safetensors``
    (plain ``SegResEncoder`` keys, BatchNorm buffers included) and ``config.json`` (sorted keys,
    two-space indent). ``lighter_zoo.SegResEncoder.from_pretrained(folder)`` reads it.

    The folder is written next to its destination and renamed into place, so a killed save leaves
    no half folder; an existing folder is never replaced unless ``overwrite``.
    """
    encoder = find_encoder(model)
    return _write_released_folder(folder, encoder, encoder_config(encoder), overwrite, model_card)


def _write_released_folder(
    folder: str | os.PathLike, module: nn.Module, config: dict, overwrite: bool, model_card: str | None = None
) -> Path:
    """``model.safetensors`` (``module``'s state dict) + ``config.json``, as huggingface_hub lays them out,
    written beside ``folder`` and renamed into place; an existing non-empty folder only with ``overwrite``."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{folder} already exists and is not empty; pass overwrite=True (CLI: --overwrite).")
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        save_file(tensors, str(tmp / WEIGHTS_FILENAME))
        (tmp / CONFIG_FILENAME).write_text(json.dumps(config, sort_keys=True, indent=2))
        if model_card:
            (tmp / "README.md").write_text(model_card)
        os.chmod(tmp, user_mode(folder=True))  # mkdtemp made it 0o700
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


def read_config(folder: str | os.PathLike) -> dict:
    """The ``SegResEncoder`` arguments in a released-format ``config.json``, checked."""
    path = Path(folder) / CONFIG_FILENAME
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: a released-format folder holds config.json and {WEIGHTS_FILENAME}.")
    except json.JSONDecodeError as err:
        raise WeightLoadError(f"{path} is not valid JSON ({err}); download or write it again.") from err
    if not isinstance(config, dict):
        raise WeightLoadError(f"{path} must hold a JSON object of SegResEncoder arguments, not {type(config).__name__}.")
    if config.get("head_module") is not None:
        raise WeightLoadError(f"{path} sets head_module; CT-FM encoders have none.")
    return {k: v for k, v in config.items() if k in ENCODER_ARGS}


def check_ct_fm_config(config: Mapping, source: str | os.PathLike = CONFIG_FILENAME) -> None:
    """Raise :class:`WeightLoadError` unless ``config`` (``SegResEncoder`` arguments) is the CT-FM topology.

    Arguments it leaves out are CT-FM's, as :func:`ctfm.networks.build_encoder` fills them in.
    """
    want = {**ENCODER_CONFIG, "norm": ENCODER_NORM, "act": "relu", "anisotropic_scales": None}

    def plain(value):  # ("relu", {...}) -> "relu"; (1, 2) -> [1, 2]
        if isinstance(value, (list, tuple)):
            return str(value[0]).lower() if value and isinstance(value[0], str) else list(value)
        return value.lower() if isinstance(value, str) else value

    differ = {k: config[k] for k in want if k in config and plain(config[k]) != plain(want[k])}
    if not differ:
        return
    shown = ", ".join(f"{k} {v} (CT-FM: {want[k]})" for k, v in differ.items())
    merged = {**ENCODER_CONFIG, **config}
    width = merged["init_filters"] * 2 ** (len(merged["blocks_down"]) - 1)  # channels of the last stage
    outputs = "outputs" if width == EMBEDDING_DIM else f"{width}-d outputs"
    raise WeightLoadError(
        f"{source} describes a SegResEncoder with {shown}: not the CT-FM encoder, so its {outputs} would "
        "not be CT-FM embeddings. Give the CT-FM weights (the released ct_fm_feature_extractor folder, or an "
        "encoder exported by the pretraining bundle); to build what the file describes instead, call "
        "load_pretrained(path, require_ct_fm=False)."
    )


def load_pretrained(path: str | os.PathLike, require_ct_fm: bool = True) -> nn.Module:
    """Build a ``SegResEncoder`` from a released-format folder (its ``config.json``) and load it strictly.

    A ``config.json`` that describes another topology than CT-FM's is refused (:func:`check_ct_fm_config`)
    unless ``require_ct_fm=False``. A bare weights file (no ``config.json``) is built with the CT-FM
    topology. The encoder is returned in ``eval()`` mode: BatchNorm must use the stored running statistics.
    """
    from ctfm.networks import build_encoder

    path = Path(path)
    config = read_config(path) if path.is_dir() and (path / CONFIG_FILENAME).exists() else {}
    if config and require_ct_fm:
        check_ct_fm_config(config, path / CONFIG_FILENAME)
    encoder = build_encoder(**config)
    load_encoder_weights(encoder, path)
    return encoder.eval()


# ----------------------------------------------------------------------------------------------
# A segmentation bundle's models/model.pt
# ----------------------------------------------------------------------------------------------


def segmentation_model(
    weights: str | os.PathLike, out_channels: int, dsdepth: int = 4, encoder_only: bool = False, seed: int = 0
) -> nn.Module:
    """The CT-FM ``SegResNetDS`` with ``out_channels`` outputs, its weights from ``weights``, strictly.

    ``weights`` holds the whole network: the released whole-body folder (``config.json`` +
    ``model.safetensors``, as lighter_zoo's ``SegResNet.save_pretrained`` writes them; its
    ``out_channels`` and ``dsdepth`` must match) or a bundle ``model.pt``. With ``encoder_only`` it
    holds CT-FM encoder weights in any form :func:`load_encoder_weights` reads, and the decoder
    starts from ``torch.manual_seed(seed)``.
    """
    torch.manual_seed(seed)
    model = build_segmentation_network(out_channels=out_channels, dsdepth=dsdepth)
    if encoder_only:
        return load_encoder_weights(model, weights)
    return load_segmentation_weights(model, weights)


# SegResNetDS arguments a whole-body config.json may list, beyond the encoder's.
SEGMENTATION_ARGS = ("out_channels", "dsdepth")


def load_segmentation_weights(model: nn.Module, weights: str | os.PathLike) -> nn.Module:
    """Load a whole ``SegResNetDS`` into ``model``, strictly: the released whole-body folder (``config.json``
    with any subset of the constructor arguments + ``model.safetensors``) or a bundle ``model.pt``.

    Every argument the folder's ``config.json`` names must equal ``model``'s, so weights of another network
    are refused with what differs before any tensor is read; then every tensor is checked by name and shape.
    """
    config_file = Path(weights) / CONFIG_FILENAME
    if config_file.is_file():
        read_config(weights)  # a JSON object, no head_module
        written = json.loads(config_file.read_text())
        differ = {
            arg: (written[arg], getattr(model, arg))
            for arg in (*SEGMENTATION_ARGS, "init_filters", "blocks_down", "in_channels")
            if arg in written and hasattr(model, arg) and _plain(written[arg]) != _plain(getattr(model, arg))
        }
        if differ:
            shown = ", ".join(f"{arg}={theirs} (the network: {ours})" for arg, (theirs, ours) in differ.items())
            raise WeightLoadError(
                f"{config_file} describes a SegResNetDS with {shown}. Use weights of the same network (the "
                "released whole-body folder has out_channels=118, dsdepth=4), or build the network as the file says."
            )
    return load_network_weights(model, weights)


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def save_segmentation_pretrained(model: nn.Module, folder: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a whole ``SegResNetDS`` as the released whole-body folder: ``model.safetensors`` (its state dict)
    and ``config.json`` with the constructor arguments that differ from ``SegResNetDS``'s defaults, laid out
    as huggingface_hub's ``save_pretrained`` writes them (sorted keys, two-space indent), so lighter_zoo's
    ``SegResNet.from_pretrained`` and :func:`load_segmentation_weights` read it. Written beside the
    destination and renamed into place; an existing folder is never replaced unless ``overwrite``.
    """
    import inspect

    from monai.networks.nets import SegResNetDS

    if not isinstance(model, SegResNetDS):
        raise WeightLoadError(f"a whole-body folder holds a SegResNetDS, not a {type(model).__name__}.")
    defaults = {k: p.default for k, p in inspect.signature(SegResNetDS.__init__).parameters.items()}
    config = {
        arg: _plain(getattr(model, arg))
        for arg in ("spatial_dims", "in_channels", *SEGMENTATION_ARGS, "init_filters", "blocks_down", "norm", "act")
        if _plain(getattr(model, arg)) != _plain(defaults.get(arg))
    }
    return _write_released_folder(folder, model, config, overwrite)


def segmentation_config(state_dict: Mapping[str, torch.Tensor], source: str | os.PathLike = "<state dict>") -> dict:
    """The ``SegResNetDS`` arguments a whole-network state dict was saved from: the encoder's (its first
    convolution and blocks), ``out_channels`` (the heads' rows) and ``dsdepth`` (how many heads)."""
    weights = strip_wrappers(state_dict)
    encoder = infer_encoder_config(encoder_state_dict(weights, source))
    heads = [v for k, v in weights.items() if re.search(r"(^|\.)up_layers\.\d+\.head\.weight$", k)]
    if not heads:
        raise WeightLoadError(f"{source} holds no SegResNetDS decoder heads (up_layers.*.head): encoder weights only? "
                              "A whole-body folder needs a whole trained segmentation network (a bundle model.pt).")
    config = {k: encoder[k] for k in ("in_channels", "init_filters", "blocks_down") if k in encoder}
    return {**config, "out_channels": int(heads[0].shape[0]), "dsdepth": len(heads)}


def convert_segmentation_weights(input: str | os.PathLike, output: str | os.PathLike, overwrite: bool = False) -> Path:
    """A trained bundle ``model.pt`` (or a whole-body folder) -> the released whole-body folder layout: the network
    is rebuilt as the file describes (:func:`segmentation_config`) and every tensor loaded strictly."""
    source = resolve_weights_file(input)
    model = build_segmentation_network(**segmentation_config(read_state_dict(source), source))
    return save_segmentation_pretrained(load_segmentation_weights(model, input), output, overwrite=overwrite)


def save_model_state(model: nn.Module, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """``torch.save`` the state dict (what a bundle's ``models/model.pt`` holds) through a temporary file;
    an existing file is never replaced unless ``overwrite``."""
    from ctfm.io import atomic_path

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; move it away or pass overwrite=True (CLI: --overwrite).")
    with atomic_path(path) as tmp:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    return path
