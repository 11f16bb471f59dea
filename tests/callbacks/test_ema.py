"""Weight EMA through ``train.py``: validation, the best checkpoint and the test after fit all use the
averaged weights (Lightning's own callback tests the raw ones after fit)."""

from __future__ import annotations

from pathlib import Path

import hydra
import pandas as pd
import pytest
import torch
from torch.utils.data import default_collate

from xray3d.callbacks.ema import EMAWeights
from xray3d.metrics.image import dice_coefficient
from xray3d.pipeline import train


def _test_dice(cfg, state_dict: dict) -> float:
    """Dice of the test vertebra predicted with ``state_dict`` (the run's data and network)."""
    dm = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model, optimizer=None)
    model.load_state_dict(state_dict)
    model.eval()
    ds = dm.dataset("test")
    batch = dm.render(default_collate([ds[0]]), augment=False)
    with torch.no_grad():
        _, pred = model.predict_mask(batch)
    return float(dice_coefficient(pred[0, 0].numpy(), batch["mask"][0, 0].numpy().astype(bool)))


def test_test_after_fit_uses_the_averaged_weights(compose_train):
    cfg = compose_train("debug=limit", "trainer.max_steps=8", "callbacks.ema.decay=0.5")
    assert cfg.callbacks.ema._target_ == "xray3d.callbacks.ema.EMAWeights"  # the default recipe
    metrics, _ = train.run(cfg)
    ckpt = torch.load(metrics["paths"]["best_checkpoint"], map_location="cpu", weights_only=False)
    averaged, raw = ckpt["state_dict"], ckpt["current_model_state"]
    assert any(not torch.equal(averaged[k], raw[k]) for k in raw)
    per_case = pd.read_csv(Path(cfg.paths.output_dir) / "metrics" / "per_case.csv")
    reported = float(per_case["dice"].iloc[0])
    assert reported == pytest.approx(_test_dice(cfg, averaged), abs=1e-6)


def test_bad_decay_names_the_option():
    with pytest.raises(ValueError, match="callbacks.ema.decay"):
        EMAWeights(decay=1.0)
