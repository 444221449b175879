"""Progress of the bundles' inference: one "scan N of M" line per scan, with its file and time."""

from __future__ import annotations

import logging
import time

from ignite.engine import Engine, Events

logger = logging.getLogger("ctfm.inference")


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
