"""Progress of long bundle runs: inference logs "scan N of M" per scan; training its place, elapsed time and ETA."""

from __future__ import annotations

import datetime
import logging
import time

from ignite.engine import Engine, Events

logger = logging.getLogger("ctfm.inference")
train_logger = logging.getLogger("ctfm.training")


class ScanProgress:
    """An ignite handler for an inference evaluator (batch size 1): logs each finished scan as N of M."""

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._done)

    def _start(self, engine: Engine) -> None:
        self.started = time.perf_counter()

    def _done(self, engine: Engine) -> None:
        items = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch]
        sources = [str(getattr(item.get("image"), "meta", {}).get("filename_or_obj", "")) for item in items]
        logger.info("scan %d of %d (%.1f s): %s", engine.state.iteration, engine.state.epoch_length,
                    time.perf_counter() - self.started, ", ".join(sources))


def _clock(seconds: float) -> str:
    """``3725.2`` -> ``"1:02:05"``."""
    return str(datetime.timedelta(seconds=round(seconds)))


class TrainingProgress:
    """An ignite handler for a trainer: log lines (they read the same in a terminal and in a log file) saying
    where the run is, how long it ran and how long it still takes, and where the best model is written.

    About ``lines_per_epoch`` lines per epoch: ``epoch 3/300, iteration 20/50: elapsed 0:05:12, ETA 2:13:00``
    (the ETA is for the whole run, from the pace since this process started, so a resumed run estimates
    from its own iterations). With a ``validator`` (a MONAI evaluator with a key metric and a CheckpointSaver
    of the best model at ``best_model``), each new best score is logged with that path, and so is the best
    at the end.
    """

    def __init__(self, validator: Engine | None = None, best_model: str | None = None, lines_per_epoch: int = 10):
        self.validator, self.best_model, self.lines_per_epoch = validator, best_model, max(1, int(lines_per_epoch))
        self.best_epoch = -1

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.COMPLETED, self._completed)
        if self.validator is not None:
            self.validator.add_event_handler(Events.EPOCH_COMPLETED, self._validated)

    def _started(self, engine: Engine) -> None:
        self.started, self.first_iteration = time.perf_counter(), engine.state.iteration

    def _iteration(self, engine: Engine) -> None:
        state = engine.state
        in_epoch = (state.iteration - 1) % state.epoch_length + 1
        every = max(1, state.epoch_length // self.lines_per_epoch)
        if in_epoch % every and in_epoch != state.epoch_length:
            return
        elapsed = time.perf_counter() - self.started
        remaining = state.max_epochs * state.epoch_length - state.iteration
        eta = elapsed / max(1, state.iteration - self.first_iteration) * remaining
        train_logger.info("epoch %d/%d, iteration %d/%d: elapsed %s, ETA %s", state.epoch, state.max_epochs, in_epoch,
                    state.epoch_length, _clock(elapsed), _clock(eta))

    def _validated(self, validator: Engine) -> None:
        state = validator.state
        if state.best_metric_epoch != self.best_epoch and state.best_metric_epoch == state.epoch:
            self.best_epoch = state.best_metric_epoch
            train_logger.info("new best %s %.4f at epoch %d: model written to %s", validator.state.key_metric_name,
                        state.best_metric, state.best_metric_epoch, self.best_model)

    def _completed(self, engine: Engine) -> None:
        train_logger.info("training done in %s", _clock(time.perf_counter() - self.started))
        if self.validator is not None and self.best_epoch >= 0:
            train_logger.info("best %s %.4f at epoch %d: the model is %s", self.validator.state.key_metric_name,
                        self.validator.state.best_metric, self.best_epoch, self.best_model)
