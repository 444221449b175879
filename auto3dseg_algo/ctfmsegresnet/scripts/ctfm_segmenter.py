"""Training, validation and inference of one ctfmsegresnet fold: the code behind train.py, validate.py, infer.py.

Reading order: the configuration and its two modes (:func:`load_config`), the network
(:func:`build_network`), the transforms (:func:`preprocessing`, :func:`train_transforms`), then
:class:`Segmenter` (``train``, ``validate``, ``infer_image``, ``infer_datalist``).

Files written under ``ckpt_path`` (``<fold folder>/model``): ``model.pt`` (best weights, with the
resolved config), ``model_last.pt`` (the resume point: weights, optimizer, scheduler), ``progress.yaml``
(one entry per new best; Auto3DSeg reads ``best_avg_dice_score`` of the last) and ``training.log``.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import yaml
from monai.auto3dseg.utils import datafold_read
from monai.bundle import ConfigParser
from monai.data import CacheDataset, DataLoader
from monai.inferers import SlidingWindowInferer
from monai.losses import DeepSupervisionLoss, DiceCELoss
from monai.metrics import DiceMetric
from monai.optimizers import WarmupCosineSchedule
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureTyped,
    Invertd,
    Lambdad,
    Orientationd,
    RandAffined,
    RandCropByLabelClassesd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SaveImage,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)
from monai.utils import set_determinism

from ctfm.networks import build_segmentation_network
from ctfm.registry import AIR_HU, ORIENTATION
from ctfm.transforms import RAS_LABELS, hu_scaling
from ctfm.validation import LoadCTd, check_files_exist, load_volume
from ctfm.weights import load_ct_fm_weights

logger = logging.getLogger("ctfmsegresnet")

# What each mode uses for a key left null in hyper_parameters.yaml: the one home of these defaults.
MODE_DEFAULTS = {
    "ct_fm": {"learning_rate": 5.0e-4, "norm": "batch", "orientation": ORIENTATION, "intensity": "ct_fm"},
    "baseline": {"learning_rate": 2.0e-4, "norm": "instance", "orientation": "RAS", "intensity": "range"},
}
NORMS = {"batch": "batch", "instance": ("instance", {"affine": True})}
INTENSITIES = ("ct_fm", "range")
DEEP_SUPERVISION_DEPTH = 4  # output heads, as in the stock template
ROI_DIVISOR = 16  # SegResNetDS halves each axis four times
VALIDATIONS_PER_RUN = 20  # when num_epochs_per_validation is null
RAM_SHARE_FOR_CACHE = 0.4  # when cache_rate is null
RAS_AXIS = {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


def load_config(config_file, override: dict | None = None, strict: bool = True) -> dict:
    """The resolved hyper-parameters: the YAML file(s), then ``override``, then the mode's defaults.

    ``config_file`` is a path, a comma-separated string of paths (as AutoRunner passes them) or a list.
    With ``strict``, an override that names no hyper-parameter is an error (a typo in
    ``set_training_params`` would otherwise be ignored); without, such keys are dropped.
    """
    files = config_file.split(",") if isinstance(config_file, str) else [str(f) for f in config_file]
    parser = ConfigParser()
    parser.read_config(sorted(f.strip() for f in files if f.strip().endswith((".yaml", ".yml", ".json"))))
    for key, value in (override or {}).items():
        if key.split("#")[0] not in parser.get():
            if strict:
                raise KeyError(f"{key!r} is not a ctfmsegresnet hyper-parameter; see configs/hyper_parameters.yaml.")
            continue
        parser[key] = value
    if parser.get("bundle_root") is None or parser.get("output_classes") is None:
        raise ValueError(
            "bundle_root and output_classes are not set: this is the template itself. Run it through AutoRunner "
            "(templates_path_or_url=<auto3dseg_algo folder>), which fills them from the data analysis."
        )
    config = parser.get_parsed_content()
    config["mode"] = "ct_fm" if config.get("ct_fm_weights") else "baseline"
    for key, value in MODE_DEFAULTS[config["mode"]].items():
        if config.get(key) is None:
            config[key] = value
    check_config(config)
    return config


def check_config(config: dict) -> None:
    """Stop on values that would fail later, deep inside MONAI, with a message that says what to set."""
    for key in ("roi_size", "resample_resolution"):
        value = config[key]
        if not (isinstance(value, (list, tuple)) and len(value) == 3):
            raise ValueError(
                f"{key} must be a list of 3 numbers in RAS order, got {value!r}. Lists given to AutoRunner's "
                "set_training_params arrive as text: put them in the AutoRunner input dict/YAML instead."
            )
    if any(int(r) % ROI_DIVISOR for r in config["roi_size"]):
        raise ValueError(f"roi_size {config['roi_size']}: every axis must be a multiple of {ROI_DIVISOR} for SegResNetDS.")
    if config["norm"] not in NORMS or config["intensity"] not in INTENSITIES:
        raise ValueError(f"norm must be one of {list(NORMS)} and intensity one of {list(INTENSITIES)}.")
    if sorted(RAS_AXIS[c] for c in str(config["orientation"]).upper() if c in RAS_AXIS) != [0, 1, 2]:
        raise ValueError(f"orientation {config['orientation']!r} is not a 3-letter axis code such as SPL or RAS.")
    if config["intensity"] == "range" and not config.get("intensity_bounds"):
        raise ValueError("intensity 'range' needs intensity_bounds [low, high] in HU (filled by the data analysis).")


def array_order(values_ras, orientation: str) -> list:
    """Values given per RAS axis (x, y, z) in the array order of ``orientation``: SPL -> (z, y, x)."""
    return [values_ras[RAS_AXIS[c]] for c in orientation.upper()]


# ----------------------------------------------------------------------------------------------
# Network and transforms
# ----------------------------------------------------------------------------------------------


def build_network(config: dict) -> torch.nn.Module:
    """SegResNetDS with the CT-FM encoder topology; the norm is the mode's (CT-FM weights need batch)."""
    return build_segmentation_network(
        out_channels=config["output_classes"],
        dsdepth=DEEP_SUPERVISION_DEPTH,
        in_channels=config["input_channels"],
        norm=NORMS[config["norm"]],
    )


def intensity_transforms(config: dict) -> list:
    if config["intensity"] == "ct_fm":
        return [hu_scaling("image")]
    low, high = config["intensity_bounds"]
    # The stock template's CT "range": the foreground percentiles -> -1..1 unclipped, then a sigmoid.
    return [
        ScaleIntensityRanged("image", a_min=low, a_max=high, b_min=-1.0, b_max=1.0, clip=False),
        Lambdad("image", func=torch.sigmoid),
    ]


def preprocessing(config: dict, keys: tuple[str, ...] = ("image", "label")) -> Compose:
    """Read and check, orient, resample, crop to the body (HU > 0), pad to the patch, normalise."""
    orientation = config["orientation"]
    roi = array_order(config["roi_size"], orientation)
    modes = ["bilinear", "nearest"][: len(keys)]
    steps = [
        LoadCTd(keys, label_keys=keys[1:]),
        Orientationd(keys, axcodes=orientation, labels=RAS_LABELS),
        Spacingd(keys, pixdim=array_order(config["resample_resolution"], orientation), mode=modes),
        CropForegroundd(keys, source_key="image", allow_smaller=True),
        SpatialPadd("image", spatial_size=roi, value=AIR_HU),
    ]
    if "label" in keys:
        steps.append(SpatialPadd("label", spatial_size=roi, value=0))
    return Compose(steps + intensity_transforms(config) + [EnsureTyped(keys, dtype=torch.float32)])


def train_transforms(config: dict) -> Compose:
    """Preprocessing, then class-balanced patches and the stock template's augmentations."""
    keys = ("image", "label")
    roi = array_order(config["roi_size"], config["orientation"])
    augment = [
        RandCropByLabelClassesd(keys, label_key="label", spatial_size=roi, num_classes=config["output_classes"],
                                num_samples=config["num_crops_per_image"], warn=False),
        RandAffined(keys, prob=0.2, rotate_range=[0.26] * 3, scale_range=[0.2] * 3, mode=("bilinear", "nearest")),
        *[RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(3)],
        RandGaussianSmoothd("image", prob=0.2, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0)),
        RandScaleIntensityd("image", factors=0.3, prob=0.5),
        RandShiftIntensityd("image", offsets=0.1, prob=0.5),
        RandGaussianNoised("image", prob=0.2, std=0.1),
    ]
    return Compose(preprocessing(config, keys).transforms + tuple(augment))


# ----------------------------------------------------------------------------------------------
# The segmenter
# ----------------------------------------------------------------------------------------------


class Segmenter:
    """One fold: ``train()``, ``validate()``, ``infer_image(path)`` and ``infer_datalist()``."""

    def __init__(self, config_file, override: dict | None = None, strict: bool = True):
        self.config = load_config(config_file, override, strict)
        self.ckpt_path = Path(self.config["ckpt_path"])
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.amp = bool(self.config["amp"]) and self.device.type == "cuda"
        self.network = build_network(self.config).to(self.device)
        self.inferer = SlidingWindowInferer(
            roi_size=array_order(self.config["roi_size"], self.config["orientation"]),
            sw_batch_size=self.config["sw_batch_size"],
            overlap=self.config["overlap"],
            mode="gaussian",
        )

    # --- data ---------------------------------------------------------------------------------
    def datalists(self) -> tuple[list[dict], list[dict]]:
        """``(training, validation)`` cases of this fold, checked to exist."""
        cfg = self.config
        train_files, val_files = datafold_read(cfg["data_list_file_path"], cfg["data_file_base_dir"], fold=cfg["fold"])
        check_files_exist(train_files + val_files, where=cfg["data_list_file_path"])
        if not train_files or not val_files:
            raise ValueError(
                f"fold {cfg['fold']} of {cfg['data_list_file_path']} gives {len(train_files)} training and "
                f"{len(val_files)} validation cases; give every training case a 'fold' and keep both lists non-empty."
            )
        return train_files, val_files

    def cache_rate(self, files: list[dict], transform) -> float:
        """``cache_rate``, or the share of ``files`` whose preprocessed tensors fit in 40% of the RAM."""
        if self.config["cache_rate"] is not None:
            return float(self.config["cache_rate"])
        sample = transform(files[0])
        nbytes = sum(v.element_size() * v.numel() for v in sample.values() if isinstance(v, torch.Tensor))
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return min(1.0, RAM_SHARE_FOR_CACHE * ram / max(1, nbytes * len(files)))

    def loaders(self) -> tuple[DataLoader, DataLoader]:
        cfg = self.config
        train_files, val_files = self.datalists()
        val_transform = preprocessing(cfg)
        rate = self.cache_rate(train_files + val_files, val_transform)
        workers = cfg["num_workers"]
        logger.info("%d training, %d validation cases; caching %.0f%%", len(train_files), len(val_files), 100 * rate)
        train_ds = CacheDataset(train_files, train_transforms(cfg), cache_rate=rate, num_workers=workers)
        val_ds = CacheDataset(val_files, val_transform, cache_rate=rate, num_workers=workers)
        return (
            DataLoader(train_ds, batch_size=cfg["num_images_per_batch"], shuffle=True, num_workers=workers),
            DataLoader(val_ds, batch_size=1, num_workers=workers),
        )

    # --- training -----------------------------------------------------------------------------
    def prepare_training(self):
        """Initial weights (CT-FM encoder in CT-FM mode), optimizer, scheduler, scaler, and the resume point.

        Returns ``(optimizer, scheduler, scaler, first_epoch, best_dice)``.
        """
        cfg = self.config
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=cfg["learning_rate"], weight_decay=cfg["weight_decay"])
        scheduler = WarmupCosineSchedule(
            optimizer, warmup_steps=cfg["num_warmup_epochs"], t_total=cfg["num_epochs"], warmup_multiplier=0.1
        )
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        last = self.ckpt_path / "model_last.pt"
        if last.is_file():  # a rerun: carry on where the last one stopped
            ckpt = torch.load(last, map_location="cpu", weights_only=True)
            self.network.load_state_dict(ckpt["state_dict"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            scaler.load_state_dict(ckpt["scaler"])
            logger.info("resuming from %s: %d of %d epochs done, best Dice %.4f", last, ckpt["epoch"],
                        cfg["num_epochs"], ckpt["best_metric"])
            return optimizer, scheduler, scaler, ckpt["epoch"], ckpt["best_metric"]
        load_ct_fm_weights(self.network, cfg["ct_fm_weights"])  # "" keeps the random init; the decoder stays fresh
        return optimizer, scheduler, scaler, 0, -1.0

    def train(self) -> float:
        """Train this fold, validating and keeping the best model; returns the best average Dice."""
        cfg = self.config
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise RuntimeError(
                "ctfmsegresnet trains on one device. AutoRunner starts torchrun when several GPUs are visible: "
                "call runner.set_device_info(cuda_visible_devices=[0])."
            )
        self.ckpt_path.mkdir(parents=True, exist_ok=True)
        setup_logging(self.ckpt_path / "training.log")
        set_determinism(cfg["seed"])  # data order and augmentation; cuDNN may still pick its fastest kernels
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True
        logger.info("mode %s: %s", cfg["mode"], {k: cfg[k] for k in ("ct_fm_weights", *MODE_DEFAULTS["ct_fm"])})
        logger.info("roi %s, spacing %s mm (RAS order), %d classes, device %s", cfg["roi_size"],
                    cfg["resample_resolution"], cfg["output_classes"], self.device)
        train_loader, val_loader = self.loaders()
        optimizer, scheduler, scaler, first_epoch, best = self.prepare_training()
        loss_fn = DeepSupervisionLoss(
            DiceCELoss(include_background=True, to_onehot_y=True, softmax=True, squared_pred=True, smooth_nr=0, smooth_dr=1e-5)
        )
        num_epochs = cfg["num_epochs"]
        every = cfg["num_epochs_per_validation"] or max(1, num_epochs // VALIDATIONS_PER_RUN)
        for epoch in range(first_epoch, num_epochs):
            start, lr = time.time(), optimizer.param_groups[0]["lr"]
            loss = self.train_epoch(train_loader, optimizer, scaler, loss_fn)
            scheduler.step()
            logger.info("epoch %d/%d  loss %.4f  lr %.2e  %.1f s", epoch + 1, num_epochs, loss, lr, time.time() - start)
            if (epoch + 1) % every == 0 or epoch + 1 == num_epochs:
                dice = self.validation_dice(val_loader)
                mean = float(np.nanmean(dice)) if not np.all(np.isnan(dice)) else 0.0
                logger.info("validation Dice %.4f per class %s (best so far %.4f)", mean, np.round(dice, 4).tolist(), best)
                if mean > best:
                    best = mean
                    self.save("model.pt", epoch=epoch + 1, best_metric=best, config=self.config)
                    self.record_progress(epoch + 1, mean, dice, loss, lr)
            if (epoch + 1) % cfg["num_epochs_per_saving"] == 0 or epoch + 1 == num_epochs:
                self.save("model_last.pt", epoch=epoch + 1, best_metric=best, optimizer=optimizer.state_dict(),
                          scheduler=scheduler.state_dict(), scaler=scaler.state_dict())
        logger.info("done: best average Dice %.4f, model %s", best, self.ckpt_path / "model.pt")
        return best

    def train_epoch(self, loader, optimizer, scaler, loss_fn) -> float:
        self.network.train()
        losses = []
        for batch in loader:
            image, label = batch["image"].to(self.device), batch["label"].to(self.device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, enabled=self.amp):
                loss = loss_fn(self.network(image), label)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(loss.item())
        return float(np.mean(losses))

    @torch.no_grad()
    def validation_dice(self, loader) -> list[float]:
        """Dice per foreground class on the preprocessed validation cases (NaN: class in no case)."""
        self.network.eval()
        metric = DiceMetric(include_background=False, reduction="mean_batch", num_classes=self.config["output_classes"])
        for batch in loader:
            with torch.autocast(self.device.type, enabled=self.amp):
                logits = self.inferer(batch["image"].to(self.device), self.network)
            metric(y_pred=logits.argmax(1, keepdim=True), y=batch["label"].to(self.device))
        return [float(v) for v in metric.aggregate().cpu()]

    def save(self, name: str, **content) -> None:
        """Write a checkpoint atomically: a killed save never leaves a half file under the real name."""
        path, tmp = self.ckpt_path / name, self.ckpt_path / f".{name}.tmp"
        torch.save({"state_dict": self.network.state_dict(), **content}, tmp)
        os.replace(tmp, path)

    def record_progress(self, epoch: int, mean: float, dice: list[float], loss: float, lr: float) -> None:
        path = self.ckpt_path / "progress.yaml"
        history = yaml.safe_load(path.read_text()) if path.is_file() else []
        history.append({"epoch": epoch, "best_avg_dice_score": mean, "best_dice": dice, "train_loss": loss,
                        "learning_rate": lr, "time": datetime.now().isoformat(timespec="seconds")})
        path.write_text(yaml.safe_dump(history, sort_keys=False))

    # --- inference ----------------------------------------------------------------------------
    def load_model(self, path: str | os.PathLike | None = None) -> None:
        path = Path(path or self.ckpt_path / "model.pt")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no trained model. Train this fold first: python scripts/train.py run "
                                    f"--config_file configs/hyper_parameters.yaml")
        self.network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
        self.network.eval()

    @torch.no_grad()
    def infer_image(self, image) -> torch.Tensor:
        """Class probabilities ``(C, *grid)`` of one image (a path or ``{"image": path}``) on the image's own grid."""
        transform = preprocessing(self.config, keys=("image",))
        data = transform({"image": str(image["image"] if isinstance(image, dict) else image)})
        with torch.autocast(self.device.type, enabled=self.amp):
            logits = self.inferer(data["image"][None].to(self.device), self.network)
        data["pred"] = torch.softmax(logits.float(), dim=1)[0].cpu()
        return Invertd("pred", transform=transform, orig_keys="image", nearest_interp=False)(data)["pred"]

    def infer_datalist(self) -> list[Path]:
        """Label maps of the datalist's ``infer#data_list_key`` list, in ``infer#output_path``; done cases are kept."""
        cfg = self.config
        files, _ = datafold_read(cfg["data_list_file_path"], cfg["data_file_base_dir"], fold=-1,
                                 key=cfg["infer"]["data_list_key"])
        check_files_exist(files, keys=("image",), where=cfg["data_list_file_path"])
        setup_logging()
        self.load_model()
        return [self.save_label_map(item, cfg["infer"]["output_path"], k, len(files)) for k, item in enumerate(files, 1)]

    def save_label_map(self, item: dict, output_dir, k: int = 1, n: int = 1, probs=None) -> Path:
        name = Path(item["image"]).name.split(".")[0]
        target = Path(output_dir) / f"{name}_seg.nii.gz"
        if target.exists():
            logger.info("[%d/%d] %s exists, kept", k, n, target)
            return target
        probs = self.infer_image(item) if probs is None else probs
        SaveImage(output_dir=output_dir, output_postfix="seg", output_dtype=np.uint8, separate_folder=False,
                  resample=False, print_log=False)(probs.argmax(0, keepdim=True))
        logger.info("[%d/%d] %s", k, n, target)
        return target

    def validate(self) -> list[float]:
        """Dice per class of the best model on this fold's validation cases, on their original grids."""
        cfg = self.config
        _, val_files = self.datalists()
        setup_logging()
        self.load_model()
        metric = DiceMetric(include_background=False, reduction="mean_batch", num_classes=cfg["output_classes"])
        for k, item in enumerate(val_files, 1):
            probs = self.infer_image(item)
            metric(y_pred=probs.argmax(0, keepdim=True)[None], y=load_volume(item["label"])[None])
            if cfg["validate"]["save_mask"]:
                self.save_label_map(item, cfg["validate"]["output_path"], k, len(val_files), probs)
        dice = [float(v) for v in metric.aggregate()]
        logger.info("validation (original grids): Dice %.4f per class %s", float(np.nanmean(dice)), dice)
        return dice


def setup_logging(path: Path | None = None) -> None:
    """Log to stdout, and to ``path``: AutoRunner captures the training output, the file shows progress live."""
    handlers = [logging.StreamHandler()] if not logger.handlers else []
    if path is not None and not any(isinstance(h, logging.FileHandler) for h in logger.handlers):
        handlers.append(logging.FileHandler(path))
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
