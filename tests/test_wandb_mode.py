"""W&B mode: offline by default, but WANDB_MODE (e.g. disabled) is honoured."""

from __future__ import annotations

from pathlib import Path

import pytest

from xray3d import _wandb_offline
from xray3d.pipeline import train


@pytest.mark.parametrize(
    ("env", "offline"),
    [({}, True), ({"XRAY3D_WANDB_OFFLINE": "false"}, False), ({"WANDB_MODE": "disabled"}, False)],
)
def test_offline_flag(monkeypatch, env, offline):
    for key in ("WANDB_MODE", "XRAY3D_WANDB_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert _wandb_offline() is offline


def test_wandb_mode_disabled_writes_no_offline_run(compose_train, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = compose_train("debug=limit", "logger=wandb", "trainer.max_steps=1", "test=false")
    assert cfg.logger.wandb.offline is False
    try:
        train.run(cfg)
    finally:
        import wandb

        wandb.teardown()  # W&B keeps the mode of its first setup per process: reset it for later tests
    assert not list(Path(cfg.paths.output_dir).glob("wandb/offline-run-*"))
