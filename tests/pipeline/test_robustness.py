"""Angle-perturbation suite on the real embedded CT (tiny training run)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from xray3d.pipeline import robustness, train

from ..conftest import compose_cfg


@pytest.fixture
def short_ckpt(compose_train) -> Path:
    cfg = compose_train("debug=limit", "logger=none", "test=false")
    train.run(cfg)
    return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"


def test_lat_perturbation_table_and_curve(short_ckpt, tmp_path, embedded_small):
    out = tmp_path / "rob"
    cfg = compose_cfg(
        "robustness", [f"ckpt_path={short_ckpt}", "angles_deg=[0,10]", "logger=none"], out, embedded_small
    )
    df = robustness.run(cfg)
    assert list(df["angle_deg"]) == [0.0, 10.0] and set(df["sample_id"]) == {"chestct_vert-T7"}
    on_disk = pd.read_csv(out / "robustness" / "per_case.csv")
    assert len(on_disk) == 2 and {"dice", "hd95_mm", "asd_mm", "nsd"} <= set(on_disk.columns)
    assert (out / "robustness" / "curve.png").stat().st_size > 0
    table = (out / "robustness" / "table.md").read_text()
    assert "| 0.0 |" in table and "| 10.0 |" in table


def test_bad_view_name(short_ckpt, tmp_path, embedded_small):
    cfg = compose_cfg(
        "robustness", [f"ckpt_path={short_ckpt}", "views=[side]"], tmp_path / "r", embedded_small
    )
    with pytest.raises(ValueError, match="views"):
        robustness.run(cfg)


def test_robustness_is_mirrored_to_wandb_offline(short_ckpt, tmp_path, embedded_small, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "rob_wandb"
    cfg = compose_cfg(
        "robustness", [f"ckpt_path={short_ckpt}", "angles_deg=[0,5]", "logger=wandb"], out, embedded_small
    )
    robustness.run(cfg)
    runs = list(out.glob("wandb/offline-run-*"))
    assert runs, "no offline W&B run written"
    media = runs[0] / "files" / "media"
    assert list(media.glob("images/robustness/curve_*.png"))
    assert list(media.glob("table/robustness/per_case_*.table.json"))
    assert list(media.glob("table/robustness/table_*.table.json"))
