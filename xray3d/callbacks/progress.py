"""Plain progress lines for logs that are not a terminal (``| tee``, SLURM job files)."""

from __future__ import annotations

import logging
import sys
import time

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar

__all__ = ["LogProgress", "StepProgressBar"]

log = logging.getLogger("xray3d.progress")


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class LogProgress(L.Callback):
    """Log ``step k/N, loss, it/s, ETA`` every ``every_n_steps`` steps or ``every_s`` seconds, whichever
    comes first, when stdout is not a terminal (on a terminal Lightning's progress bar shows it).

    Args:
        every_n_steps: steps between lines.
        every_s: seconds between lines.
        force: log even on a terminal.
    """

    def __init__(self, every_n_steps: int = 50, every_s: float = 60.0, force: bool = False) -> None:
        if every_n_steps < 1 or every_s <= 0:
            raise ValueError("callbacks.progress: every_n_steps must be >= 1 and every_s > 0")
        self.every_n_steps = int(every_n_steps)
        self.every_s = float(every_s)
        self.force = force
        self._t0 = self._last_t = 0.0
        self._step0 = self._last_step = 0

    def _active(self, trainer: L.Trainer) -> bool:
        return trainer.is_global_zero and (self.force or not sys.stdout.isatty())

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = self._last_t = time.monotonic()
        self._step0 = self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._active(trainer):
            return
        step, now = trainer.global_step, time.monotonic()
        if step - self._last_step < self.every_n_steps and now - self._last_t < self.every_s:
            return
        rate = (step - self._step0) / max(now - self._t0, 1e-9)
        max_steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        loss = trainer.callback_metrics.get("train/loss_step")
        text = f"step {step}/{max_steps or '?'}"
        if loss is not None:
            text += f"  loss {float(loss):.4f}"
        text += f"  {rate:.2f} it/s"
        if max_steps and rate > 0:
            text += f"  ETA {_duration((max_steps - step) / rate)}"
        val = trainer.callback_metrics.get("val/dice")
        if val is not None:
            text += f"  val/dice {float(val):.4f}"
        log.info(text)
        self._last_t, self._last_step = now, step


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar, reading ``Epoch 3 (step 120/1000)`` instead of ``Epoch 3/-2`` when the
    run is bounded by ``trainer.max_steps`` (``max_epochs = -1``)."""

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        if (
            trainer.max_epochs is not None
            and trainer.max_epochs < 0
            and trainer.max_steps
            and trainer.max_steps > 0
        ):
            text = f"Epoch {current_epoch} (step {trainer.global_step}/{trainer.max_steps})"
            return f"{text:{len(self.validation_description)}}"
        return super()._get_train_description(current_epoch)
