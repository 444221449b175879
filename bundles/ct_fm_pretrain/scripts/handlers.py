"""Handlers specific to pretraining: full-state checkpoints with resume and encoder export, a console
progress bar, and a collapse warning."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar
from monai.handlers import CheckpointLoader

from ctfm.training import CheckpointSaver
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

    - Saved (:class:`ctfm.training.CheckpointSaver`, written to a temporary name and renamed): network
      (without DDP wrapper), optimizer, lr_scheduler, trainer (epoch, iteration) and the AMP grad scaler
      when AMP is on. Files ``checkpoint_iteration=N.pt``, the last ``n_saved`` kept, plus
      ``checkpoint_final_iteration=N.pt``.
    - When: after all the work of iteration N. On the last iteration of an epoch that includes the
      epoch's end (``EPOCH_COMPLETED``: the learning-rate step of ``LrScheduleHandler``, which the bundle
      lists before this handler), so a resumed run starts the next epoch with the next epoch's rate.
    - Exported (:func:`ctfm.weights.save_pretrained`): the encoder of each checkpoint, in the released
      CT-FM layout, as ``export_dir/iteration_NNNNNNNN/``, loadable by the rest of the project.
    - ``resume_from``: the checkpoint to continue from, or ``None`` for a new run. The bundle sets it with
      :func:`ctfm.training.resume_checkpoint` (the bundles' one resume rule), so a run killed and started
      again with the same command continues at the same iteration and learning rate.
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
        resume_from: str | os.PathLike | None = None,
        framework: str = "",
    ):
        self.ckpt_dir, self.export_dir = Path(ckpt_dir), Path(export_dir)
        self.network, self.optimizer, self.lr_scheduler = network, optimizer, lr_scheduler
        self.interval, self.n_saved, self.framework = int(interval), n_saved, framework
        self.resume_from = resume_from

    def attach(self, engine: Engine) -> None:
        state = {"network": self.network, "optimizer": self.optimizer, "trainer": engine}
        if self.lr_scheduler is not None:
            state["lr_scheduler"] = self.lr_scheduler
        if getattr(engine, "scaler", None) is not None:
            state["scaler"] = engine.scaler
        if self.resume_from:
            device = getattr(engine.state, "device", None)
            CheckpointLoader(str(self.resume_from), state, map_location=device).attach(engine)
            engine.add_event_handler(Events.STARTED, self._log_resumed)
        self.saver = CheckpointSaver(
            str(self.ckpt_dir), state, name=logger.name, epoch_level=False, save_interval=self.interval,
            n_saved=self.n_saved, save_final=True,
        )
        engine.add_event_handler(Events.COMPLETED, self.saver.completed)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self.saver.exception_raised)
        # Iteration N's state is whole after its ITERATION_COMPLETED, or, at an epoch's end, its EPOCH_COMPLETED.
        engine.add_event_handler(Events.ITERATION_COMPLETED(event_filter=self._due_within_epoch), self.save)
        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=self._due_at_epoch_end), self.save)
        # After the saver: an export exists only for a checkpoint that was written.
        engine.add_event_handler(Events.COMPLETED, self.export)

    def _due_within_epoch(self, engine: Engine, iteration: int) -> bool:
        return iteration % self.interval == 0 and iteration % engine.state.epoch_length != 0

    def _due_at_epoch_end(self, engine: Engine, epoch: int) -> bool:
        return engine.state.iteration % self.interval == 0

    def save(self, engine: Engine) -> None:
        self.saver.interval_completed(engine)
        self.export(engine)

    def _log_resumed(self, engine: Engine) -> None:
        logger.info(
            "resumed from %s at iteration %d (%d epoch(s) completed), lr %.3g",
            self.resume_from, engine.state.iteration, engine.state.epoch, self.optimizer.param_groups[0]["lr"],
        )

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
