"""Config helpers: the W&B mirror of commands that run outside a Lightning fit/test."""

from __future__ import annotations

import numpy as np
import pandas as pd
from lightning.pytorch.loggers import WandbLogger
from omegaconf import OmegaConf

from xray3d.utils.instantiate import mirror_to_wandb


def test_mirror_to_wandb_logs_tables_without_infinities(tmp_path, monkeypatch):
    logged = {}
    monkeypatch.setattr(
        WandbLogger, "log_table", lambda self, key, dataframe: logged.update({key: dataframe})
    )
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = OmegaConf.create(
        {
            "logger": {
                "wandb": {
                    "_target_": "lightning.pytorch.loggers.WandbLogger",
                    "save_dir": str(tmp_path),
                    "offline": True,
                    "project": "xray3d-test",
                }
            }
        }
    )
    df = pd.DataFrame({"sample_id": ["a", "b"], "hd95_mm": [1.5, np.inf]})  # inf: an empty prediction
    assert mirror_to_wandb(cfg, {"robustness/per_case": df}, {})
    sent = logged["robustness/per_case"]
    assert sent["hd95_mm"].iloc[0] == 1.5 and np.isnan(sent["hd95_mm"].iloc[1])
    assert np.isinf(df["hd95_mm"].iloc[1])  # the caller's table (written to disk) is left as it is
    assert not mirror_to_wandb(OmegaConf.create({"logger": None}), {"t": df}, {})
