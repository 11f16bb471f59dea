"""Exponential moving average of the weights: Lightning's ``EMAWeightAveraging``, safe to test after fit.

Lightning's callback validates, checkpoints (``state_dict``) and finishes training with the averaged
weights, and keeps the raw weights in the checkpoint's ``current_model_state`` so that training can
resume. It also reloads those raw weights whenever a checkpoint is loaded after ``fit`` has run in the
same process, so ``trainer.test(ckpt_path="best")`` after ``trainer.fit`` (what ``train.py`` does) would
test the raw weights, not the averaged ones the checkpoint was chosen with (Lightning 2.6.6). Here a
checkpoint loaded outside ``fit`` keeps its ``state_dict``: test, ``eval.py`` and ``xray3d-predict``
all use the averaged weights.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn

__all__ = ["EMAWeights"]


class EMAWeights(EMAWeightAveraging):
    """EMA of the weights (and BatchNorm statistics) for validation, checkpoints and test.

    Args:
        decay: weight of the old average per optimizer step (0.99: a half-life of about 70 steps).
        update_starting_at_step: first optimizer step (0-based) that updates the average.
        kwargs: passed to :class:`~lightning.pytorch.callbacks.EMAWeightAveraging`.
    """

    def __init__(
        self, decay: float = 0.99, update_starting_at_step: int | None = None, **kwargs: Any
    ) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"callbacks.ema.decay must be in (0, 1), got {decay}")
        super().__init__(decay=decay, update_starting_at_step=update_starting_at_step, **kwargs)

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Resume the average when fitting; otherwise keep the averaged ``state_dict`` already loaded."""
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
