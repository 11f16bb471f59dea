"""Save ``last.ckpt`` when the job is preempted (SIGTERM), so a requeued run loses no finished steps."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

__all__ = ["PreemptionCheckpoint"]

log = logging.getLogger(__name__)


class PreemptionCheckpoint(L.Callback):
    """On SIGTERM (SLURM preemption, ``scancel``, submitit's time-out handling), write the current training
    state to ``<dirpath>/last.ckpt``, which auto-resume (``xray3d.pipeline.resume``) restarts from.

    Only a termination signal triggers it: a crash (e.g. a non-finite loss) must not overwrite the last good
    ``last.ckpt``. Lightning turns SIGTERM into :class:`SIGTERMException` at the next batch boundary.

    Args:
        dirpath: the checkpoint folder of the run.
        filename: checkpoint file name without suffix.
    """

    def __init__(self, dirpath: str, filename: str = "last") -> None:
        self.path = Path(dirpath) / f"{filename}.ckpt"

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException) or not trainer.training:
            return
        trainer.save_checkpoint(str(self.path))  # collective: every rank calls it, rank 0 writes
        log.warning("terminated at step %d: training state saved to %s", trainer.global_step, self.path)
