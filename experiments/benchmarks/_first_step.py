"""Step timestamps of a real ``train.py`` run, for ``train_throughput.py`` (not part of the package).

Added to a training run with (``experiments/benchmarks`` on ``PYTHONPATH``)::

    python train.py ... +callbacks.first_step._target_=_first_step.StepTimer +callbacks.first_step.out=t.json

Writes ``t.json`` (rank 0 only) with wall-clock ``time.time()`` stamps: ``setup`` (after ``prepare_data``
and the datamodule's ``setup``, i.e. after the datasets are loaded), ``train_start``, every
``on_train_batch_end`` in ``steps`` (no device sync: the stamps of asynchronous CUDA steps are only
exact on average over many steps) and the process's peak RSS (``ru_maxrss``, MB) at setup, at the first
step and at the end of fit. The file is rewritten after the first step, so it exists even if the run
dies later.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import lightning as L


def _peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024**2 if sys.platform == "darwin" else rss / 1024


class StepTimer(L.Callback):
    """Record when setup ends, training starts and each training batch ends.

    Args:
        out: JSON file to write.
    """

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.stamps: dict = {"steps": []}

    def _write(self, trainer: L.Trainer) -> None:
        if trainer.global_rank == 0:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_text(json.dumps(self.stamps))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.stamps["setup"] = time.time()
        self.stamps["rss_setup_mb"] = _peak_rss_mb()
        self.stamps["world_size"] = trainer.world_size

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.stamps["train_start"] = time.time()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        self.stamps["steps"].append(time.time())
        if len(self.stamps["steps"]) == 1:
            self.stamps["rss_first_step_mb"] = _peak_rss_mb()
            self._write(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.stamps["fit_end"] = time.time()
        self.stamps["rss_fit_end_mb"] = _peak_rss_mb()
        self._write(trainer)
