"""xray3d-aggregate over a multirun-like directory of evaluated runs."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xray3d.pipeline.aggregate import aggregate, main


def _run(
    root: Path, name: str, model: str, data: str, anatomy: str, dice: float, n: int = 6, err: bool = False
):
    run = root / name
    (run / "metrics").mkdir(parents=True)
    rng = np.random.default_rng(len(name))
    d = np.clip(dice + rng.normal(0, 0.02, n), 0, 1)
    df = pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(n)],
            "dice": d,
            "hd95_mm": 10 * (1 - d),
            "asd_mm": 1 - d,
            "nsd": d,
        }
    )
    if err:
        df["clinical_status"] = "ok"
        df["head_radius_err_mm"] = 5 * (1 - d)
    df.to_csv(run / "metrics" / "per_case.csv", index=False)
    labels = {"model": model, "data": data, "anatomy": anatomy}
    (run / "metrics" / "summary.json").write_text(json.dumps({"labels": labels}))
    return run


def test_aggregate_tables_plots_and_run_log(tmp_path):
    _run(tmp_path, "0_femur_unet", "unet", "totalseg_femur", "femur", 0.9, err=True)
    _run(tmp_path, "1_femur_swin", "swinunetr", "totalseg_femur", "femur", 0.8, err=True)
    _run(tmp_path, "2_hip_unet", "unet", "totalseg_hip", "hip", 0.7)
    old = _run(tmp_path, "3_hip_unet_old", "unet", "totalseg_hip", "hip", 0.1)
    past = time.time() - 3600
    os.utime(old / "metrics" / "per_case.csv", (past, past))
    bad = tmp_path / "4_broken" / "metrics"
    bad.mkdir(parents=True)
    (bad / "per_case.csv").write_text("not,a\n")
    rob = tmp_path / "5_rob" / "robustness"
    rob.mkdir(parents=True)
    pd.DataFrame(
        {
            "sample_id": ["a", "b"] * 3,
            "angle_deg": [0, 0, 5, 5, 10, 10],
            "dice": [0.9, 0.88, 0.85, 0.84, 0.7, 0.72],
            "model": "unet",
            "anatomy": "hip",
        }
    ).to_csv(rob / "per_case.csv", index=False)

    res = aggregate(tmp_path, n_boot=200)
    out = tmp_path / "aggregate"
    runs = pd.read_csv(out / "runs.csv").set_index("run")
    assert runs.loc[str(old), "status"] == "superseded"
    assert runs.loc[str(tmp_path / "4_broken"), "status"] == "unreadable"
    assert res["models"] == ["swinunetr", "unet"] and res["anatomies"] == ["femur", "hip"]
    table = pd.read_csv(out / "benchmark_table.csv")
    assert len(table) == 3 and list(table.columns[:3]) == ["anatomy", "model", "n"]
    hip = table[(table.anatomy == "hip") & (table.model == "unet")].iloc[0]
    assert 60 < float(hip["DSC ×100"].split()[0]) < 80  # the newer run (0.7), not the superseded (0.1)
    overall = (out / "overall_table.md").read_text()
    assert "unet" in overall and "swinunetr" in overall
    assert {"boxplot_femur.png", "boxplot_hip.png", "robustness_hip.png", "clinical_table.md"} <= {
        p.name for p in out.iterdir()
    }
    corr = pd.read_csv(out / "dice_vs_clinical.csv")
    assert set(corr["model"]) == {"unet", "swinunetr"} and (corr["spearman_rho"] < -0.9).all()
    assert "| hip | unet | 10 | 2 | 71.00 [70.00, 72.00] |" in (out / "robustness_table.md").read_text()


def test_aggregate_of_an_empty_directory_fails_clearly(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no readable metrics/per_case.csv"):
        aggregate(tmp_path)
    assert main([str(tmp_path)]) == 1
    assert "multirun directory" in capsys.readouterr().err
