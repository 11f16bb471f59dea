"""Domain shift and aggregation on real runs: train (CLI) -> domain-shift evaluation -> aggregate."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from xray3d.pipeline import domain_shift
from xray3d.pipeline.aggregate import aggregate

from ..conftest import compose_cfg, run_python

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, embedded_small) -> Path:
    tmp = tmp_path_factory.mktemp("ds")
    res = run_python(
        [
            str(ROOT / "train.py"),
            "debug=limit",
            "trainer.max_steps=2",
            "logger=csv",
            f"data.data_dir={embedded_small}",
            "data.prepare=null",
        ],
        tmp,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return next((tmp / "logs").rglob("checkpoints/last.ckpt")).parent.parent


def test_domain_shift_cli_side_by_side_then_aggregate(trained_run, embedded_small, tmp_path):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    res = run_python(
        [
            "-m",
            "xray3d.pipeline.domain_shift",
            f"ckpt_path={ckpt}",
            "targets=[embedded_vertebra]",
            f"data.data_dir={embedded_small}",
            "data.prepare=null",
            "data.test_splits=[train]",  # "out of domain": another split, so the two rows differ
            "logger=csv",
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = next((tmp_path / "logs").rglob("domain_shift/per_case.csv")).parent
    df = pd.read_csv(out / "per_case.csv")
    assert sorted(df["domain"].unique()) == ["in:embedded_vertebra", "out:embedded_vertebra"]
    assert (df["domain"] == "in:embedded_vertebra").sum() == 1  # the training run's test split (T7)
    assert (df["domain"] == "out:embedded_vertebra").sum() == 2  # the train split (T1, T2)
    table = (out / "table.md").read_text()
    assert "in:embedded_vertebra" in table and "out:embedded_vertebra" in table
    assert (out / "boxplot.png").is_file() and (out / "subgroups.md").is_file()  # grouped by level
    assert (out.parent / "out_embedded_vertebra" / "metrics" / "summary.json").is_file()

    res = aggregate(tmp_path / "logs", tmp_path / "agg", n_boot=50)
    assert res["models"] == ["unet"] and res["anatomies"] == ["vertebra"]
    assert "| vertebra | unet |" in (tmp_path / "agg" / "benchmark_table.md").read_text()


def test_domain_shift_rejects_a_target_with_another_grid(trained_run, tmp_path):
    cfg = compose_cfg(
        "domain_shift",
        [
            f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}",
            "targets=[embedded_rib]",
            "in_domain=false",
        ],
        tmp_path / "out",
    )
    with pytest.raises(
        ValueError, match="128\\^3 grid at 2.5 mm but the model was trained on 64\\^3 at 1.5 mm"
    ):
        domain_shift.run(cfg, overrides=[])


def test_domain_shift_needs_targets_and_a_run_checkpoint(tmp_path):
    fake = tmp_path / "x.ckpt"
    fake.write_bytes(b"")
    cfg = compose_cfg("domain_shift", [f"ckpt_path={fake}", "targets=[]"], tmp_path / "out")
    with pytest.raises(ValueError, match="targets is empty"):
        domain_shift.run(cfg, overrides=[])
    cfg = compose_cfg("domain_shift", [f"ckpt_path={fake}", "targets=[embedded_vertebra]"], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="not inside a training run directory"):
        domain_shift.run(cfg, overrides=[])
