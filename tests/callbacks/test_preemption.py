"""Preemption: SIGTERM during Trainer.fit saves last.ckpt, and the next run resumes from it."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from xray3d.pipeline import train


class TerminateAt(L.Callback):
    """Behave like Lightning after a SIGTERM: raise SIGTERMException at a batch boundary."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise SIGTERMException(15)


def test_sigterm_saves_last_checkpoint_and_auto_resume_continues(compose_train, monkeypatch):
    cfg = compose_train("debug=limit", "logger=none", "trainer.max_steps=6", "test=false")
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    real_build = train.build

    def build_with_terminator(c):
        objs = real_build(c)
        objs["trainer"].callbacks.append(TerminateAt(3))
        return objs

    monkeypatch.setattr(train, "build", build_with_terminator)
    try:
        train.run(cfg)
    except SystemExit:
        pass
    # data.train_samples_per_epoch=8, batch 2: an epoch is 4 steps, so last.ckpt came from the preemption
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 3
    monkeypatch.setattr(train, "build", real_build)
    train.run(cfg)  # auto_resume: ckpt_path is null and last.ckpt exists
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 6
