"""The Auto3DSeg algorithm class: fills configs/hyper_parameters.yaml of one generated fold.

AutoRunner/BundleGen import this as ``ctfmsegresnet.scripts.algo.CtfmsegresnetAlgo`` (Auto3DSeg's
naming rule: folder name, ``capitalize()``, ``Algo``) and call :meth:`fill_template_config` once per fold,
after copying the template to ``work_dir/ctfmsegresnet_<fold>``. Training, validation and inference
are the scripts next to this file, run by AutoRunner in subprocesses.

The name has no underscore on purpose: AutoRunner's default ensemble (AlgoEnsembleBestByFold) reads
the fold as ``<folder>.split("_")[1]``, so a name such as ``ct_fm_segresnet`` fails after training.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import re
from pathlib import Path

import numpy as np
from monai.apps.auto3dseg import BundleAlgo
from monai.bundle import ConfigParser

from .ctfm_segmenter import ROI_DIVISOR

logger = logging.getLogger(__name__)

CONFIG = "hyper_parameters.yaml"
DEFAULT_ROI = (224, 224, 144)  # the stock template's patch, voxels, RAS order
MIN_HU_RANGE, HU_LIMITS = 500.0, (-1250.0, 1500.0)  # the stock template's CT intensity-range rule
EPOCH_BUDGET, MIN_EPOCHS, MAX_EPOCHS = 80000, 300, 1250  # the stock rule: clip(80000 / cases, 300, 1250)


class CtfmsegresnetAlgo(BundleAlgo):
    def fill_template_config(self, data_stats_file, output_path, **kwargs):
        """Write the data-analysis values and the user's input into ``configs/hyper_parameters.yaml``.

        Returns the values written, as ``{"hyper_parameters.yaml": {key: value}}`` (Auto3DSeg's fill records).
        """
        config_path = Path(output_path) / "configs" / CONFIG
        template = ConfigParser.load_config_file(str(config_path))
        user = ConfigParser.load_config_file(self.data_list_file)
        stats = ConfigParser(globals=False)
        stats.read_config(str(data_stats_file))

        values = {"bundle_root": str(output_path), "fold": int(kwargs.get("fold", 0))}
        values.update(from_data_analysis(stats, user))
        values.update(user_settings(user, template))
        if values.get("ct_fm_weights"):
            values["ct_fm_weights"] = check_ct_fm_weights(values["ct_fm_weights"], values["input_channels"])
        config_path.write_text(set_top_level(config_path.read_text(), values))
        logger.info("%s: %s", config_path, values)
        return {CONFIG: values}


def from_data_analysis(stats: ConfigParser, user: dict) -> dict:
    """Dataset-driven values, as the stock template derives them from ``datastats.yaml``."""
    modality = str(user.get("modality", "")).lower()
    if modality != "ct":
        raise ValueError(f"ctfmsegresnet segments CT only; the AutoRunner input says modality {modality!r}.")
    labels = [int(v) for v in stats["stats_summary#label_stats#labels"]]
    if labels != list(range(len(labels))):
        raise ValueError(
            f"the label maps hold the values {labels}; ctfmsegresnet needs consecutive classes 0..N-1. "
            "For an MSD tumour task, convert it first: ctfm convert-msd --task-dir <TaskXX_Name>."
        )
    spacing = [float(s) for s in stats["stats_summary#image_stats#spacing#median"]]
    size_mm = np.asarray(stats["stats_summary#image_stats#sizemm#percentile_99_5"], dtype=float)
    n_cases = int(stats["stats_summary#n_cases"])
    fg = "stats_summary#image_foreground_stats#intensity"
    low, high = float(stats[f"{fg}#percentile_00_5"]), float(stats[f"{fg}#percentile_99_5"])
    return {
        "data_file_base_dir": os.path.abspath(user["dataroot"]),
        "data_list_file_path": os.path.abspath(user["datalist"]),
        "input_channels": int(stats["stats_summary#image_stats#channels#max"]),
        "output_classes": len(labels),
        "resample_resolution": spacing,
        "roi_size": roi_for(size_mm / np.asarray(spacing)),
        "intensity_bounds": ct_intensity_bounds(low, high),
        "num_epochs": int(np.clip(math.ceil(EPOCH_BUDGET / n_cases), MIN_EPOCHS, MAX_EPOCHS)),
    }


def ct_intensity_bounds(low: float, high: float) -> list[float]:
    """The labelled voxels' HU percentiles, widened to at least 500 HU and kept within -1250..1500, as the
    stock template does for CT (a tumour alone spans too few HU to normalise a whole scan by)."""
    if high - low < MIN_HU_RANGE:
        centre = (low + high) / 2
        low, high = centre - MIN_HU_RANGE / 2, centre + MIN_HU_RANGE / 2
    return [max(low, HU_LIMITS[0]), min(high, HU_LIMITS[1])]


def roi_for(image_size_voxels) -> list[int]:
    """The stock patch clipped to the images (99.5th percentile size) and rounded down to a multiple of 16."""
    return [max(ROI_DIVISOR, int(min(r, s)) // ROI_DIVISOR * ROI_DIVISOR) for r, s in zip(DEFAULT_ROI, image_size_voxels)]


def user_settings(user: dict, template: dict) -> dict:
    """The AutoRunner input keys that are hyper-parameters of this template; near misses are reported."""
    known = {k: v for k, v in user.items() if k in template and not isinstance(template[k], dict)}
    for key in sorted(set(user) & set(template) - set(known)):
        logger.warning("AutoRunner input key %r is a section; set its entries with set_training_params, e.g. "
                       "{'%s#output_path': ...}", key, key)
    for key in sorted(set(user) - set(template)):
        close = difflib.get_close_matches(key, list(template), n=1, cutoff=0.8)
        if close:
            logger.warning("AutoRunner input key %r is not a ctfmsegresnet setting; did you mean %r?", key, close[0])
    return known


def check_ct_fm_weights(path, in_channels: int) -> str:
    """Check, before any training starts, that the CT-FM weights fit a CT-FM encoder; returns the absolute path.

    Only the tensor shapes are read (the weights are loaded once, by the training that starts from
    them). Raises ctfm's clear errors: a missing file, a file that cannot be read, or weights of another
    architecture (the message lists the missing, unexpected and mis-shaped tensors).
    """
    import torch

    from ctfm.networks import build_encoder
    from ctfm.weights import check_encoder_weights

    path = os.path.abspath(os.path.expanduser(str(path)))
    with torch.device("meta"):  # shapes only: no memory for 77.8M parameters
        encoder = build_encoder(in_channels=in_channels)
    check_encoder_weights(encoder, path, expand_input_channels=True)
    return path


def set_top_level(text: str, values: dict) -> str:
    """Replace the values of top-level ``key: value`` lines, keeping the template's comments."""
    for key, value in values.items():
        pattern = re.compile(rf"^{re.escape(key)}:[ \t]*[^#\n]*?(?P<comment>[ \t]*#.*)?$", re.MULTILINE)
        match = pattern.search(text)
        if match is None:
            raise KeyError(f"{key!r} is not a top-level key of {CONFIG}")
        # JSON is valid YAML flow style: lists stay on one line, strings are quoted.
        line, comment = f"{key}: {json.dumps(value)}", (match.group("comment") or "").strip()
        if comment:  # keep the comment in its column
            line = f"{line:<{match.group(0).index('#') - 1}} {comment}"
        text = text[: match.start()] + line + text[match.end() :]
    return text
