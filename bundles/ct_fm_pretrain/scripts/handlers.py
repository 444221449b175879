"""Handlers specific to pretraining: full-state checkpoints with resume and encoder export, a console
progress bar, and a collapse warning."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar
from monai.handlers import CheckpointLoader, CheckpointSaver

from ctfm.training import checkpoints_newest_first
from ctfm.weights import save_pretrained

logger = logging.getLogger("ct_fm_pretrain")

ENCODER_CARD = """# CT-FM encoder pretrained by bundles/ct_fm_pretrain

Iteration {iteration} (epoch {epoch}) of a `{framework}` run; output_dir `{output_dir}`.
Released CT-FM layout: `config.json` + `model.safetensors` (plain MONAI SegResEncoder keys).
Load with `ctfm.weights.load_pretrained(folder)` or `lighter_zoo.SegResEncoder.from_pretrained(folder)`.
"""


def _is_main_process() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


class TrainingCheckpoints:
    """Save the full training state every ``interval`` iterations, export the encoder each time, resume.

    - Saved (MONAI ``CheckpointSaver``): network (without DDP wrapper), optimizer, lr_scheduler,
      trainer (epoch, iteration) and the AMP grad scaler when AMP is on. Files
      ``checkpoint_iteration=N.pt``, the last ``n_saved`` kept, plus ``checkpoint_final_iteration=N.pt``.
    - Exported (:func:`ctfm.weights.save_pretrained`): the encoder of each checkpoint, in the released
      CT-FM layout, as ``export_dir/iteration_NNNNNNNN/``, loadable by the rest of the project.
    - ``resume``: ``True`` continues from the newest checkpoint in ``ckpt_dir`` when there is one (a run
      killed and started again with the same command continues at the same iteration and learning
      rate); ``False`` refuses to start over an earlier run's checkpoints; a path loads that checkpoint.
      A newest checkpoint that cannot be read (killed while writing) is skipped for the one before.
    """

    def __init__(
        self,
        ckpt_dir,
        export_dir,
        network,
        optimizer,
        lr_scheduler=None,
        interval: int = 500,
        n_saved: int | None = 2,
        resume: bool | str = True,
        framework: str = "",
    ):
        self.ckpt_dir, self.export_dir = Path(ckpt_dir), Path(export_dir)
        self.network, self.optimizer, self.lr_scheduler = network, optimizer, lr_scheduler
        self.interval, self.n_saved, self.resume, self.framework = int(interval), n_saved, resume, framework

    def attach(self, engine: Engine) -> None:
        state = {"network": self.network, "optimizer": self.optimizer, "trainer": engine}
        if self.lr_scheduler is not None:
            state["lr_scheduler"] = self.lr_scheduler
        if getattr(engine, "scaler", None) is not None:
            state["scaler"] = engine.scaler
        candidates = self._resume_candidates()
        if candidates:
            engine.add_event_handler(Events.STARTED, self._load_newest_readable, candidates, state)
        CheckpointSaver(
            str(self.ckpt_dir), state, epoch_level=False, save_interval=self.interval, n_saved=self.n_saved, save_final=True
        ).attach(engine)
        # Registered after the saver: an export exists only for a checkpoint that was written.
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self.export)
        engine.add_event_handler(Events.COMPLETED, self.export)

    def _resume_candidates(self) -> list[Path]:
        if isinstance(self.resume, (str, os.PathLike)) and str(self.resume).lower() not in ("true", "false"):
            path = Path(self.resume)
            if not path.is_file():
                raise FileNotFoundError(f"resume={path}: no such checkpoint file. Pass a checkpoint_*.pt or true/false.")
            return [path]
        existing = checkpoints_newest_first(self.ckpt_dir)
        if existing and str(self.resume).lower() == "false":
            raise FileExistsError(
                f"{self.ckpt_dir} holds checkpoints of an earlier run (newest: {existing[0].name}). Nothing is "
                "overwritten: pass --resume true to continue that run, or another --output_dir for a new one."
            )
        return existing

    def _load_newest_readable(self, engine: Engine, candidates: list[Path], state: dict) -> None:
        device = engine.state.device if hasattr(engine.state, "device") else None
        for path in candidates:
            try:
                CheckpointLoader(str(path), state, map_location=device)(engine)
            except Exception as err:  # noqa: BLE001 - a file cut short by a kill: fall back to the previous one
                logger.warning("cannot resume from %s (%s: %s); trying an older checkpoint", path, type(err).__name__, err)
                continue
            logger.info(
                "resumed from %s at iteration %d (%d epoch(s) completed), lr %.3g",
                path, engine.state.iteration, engine.state.epoch, self.optimizer.param_groups[0]["lr"],
            )
            return
        raise RuntimeError(f"none of the checkpoints {[p.name for p in candidates]} can be read; move them away to start over.")

    def export(self, engine: Engine) -> None:
        if not _is_main_process():
            return
        it, epoch = engine.state.iteration, engine.state.epoch
        card = ENCODER_CARD.format(iteration=it, epoch=epoch, framework=self.framework, output_dir=self.ckpt_dir.parent)
        # overwrite=True: after a resume, the same iteration is this run's own result, written again.
        folder = save_pretrained(self.network, self.export_dir / f"iteration_{it:08d}", overwrite=True, model_card=card)
        logger.info("exported the encoder of iteration %d to %s", it, folder)


class ConsoleProgress:
    """ignite's tqdm progress bar over the iterations of each epoch, showing the loss."""

    def __init__(self, keys=("loss", "positive_similarity", "negative_similarity")):
        self.keys = tuple(keys)

    def attach(self, engine: Engine) -> None:
        ProgressBar(persist=True).attach(engine, output_transform=lambda out: {k: out[k] for k in self.keys})


class CollapseWarning:
    """Warn (once per epoch) when the embedding standard deviation falls below ``fraction`` of its
    healthy value 1/sqrt(512): the representation is collapsing to a point."""

    def __init__(self, fraction: float = 0.1, dim: int = 512):
        self.threshold = fraction / dim**0.5
        self.warned_epoch = -1

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        std = engine.state.output["embedding_std"]
        if std < self.threshold and self.warned_epoch != engine.state.epoch:
            self.warned_epoch = engine.state.epoch
            logger.warning(
                "embedding std %.4g < %.4g at iteration %d: the representation may be collapsing. Check the "
                "learning rate, the augmentations and that crops_per_scan > 1.",
                std, self.threshold, engine.state.iteration,
            )
