"""Integration: train.py / eval.py pipelines on the real embedded CT (tiny step counts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from xray3d.pipeline import evaluate, train

from ..conftest import compose_cfg

ROOT = Path(__file__).resolve().parents[2]


def test_fast_dev_run(compose_train):
    metrics, objs = train.run(compose_train("debug=fdr"))
    assert "test/dice" in metrics and 0.0 <= metrics["test/dice"] <= 1.0


def test_short_run_writes_checkpoint_report_and_baseline_then_eval(compose_train, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_train("debug=limit", "logger=default")
    metrics, objs = train.run(cfg)
    out = Path(cfg.paths.output_dir)
    best = metrics["paths"]["best_checkpoint"]
    assert best and Path(best).is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == cfg.trainer.max_steps  # the final weights, not the last best
    per_case = pd.read_csv(out / "metrics" / "per_case.csv")
    assert list(per_case["sample_id"]) == ["chestct_vert-T7"]
    assert {"dice", "hd95_mm", "asd_mm", "nsd", "baseline_dice", "level"} <= set(per_case.columns)
    summary = json.loads((out / "metrics" / "summary.json").read_text())
    assert summary["n_cases"] == 1 and summary["baseline"]["n_train_masks"] == 2
    assert summary["ckpt_path"] == best and len(summary["config_digest"]) == 12
    # clinical parameters of the vertebra: measured on GT and prediction, or a failure with its reason
    assert per_case["clinical_status"].iloc[0] in ("ok", "pred_failed")
    assert per_case["gt_anterior_body_height_mm"].iloc[0] > 5
    assert summary["clinical"]["n_cases"] == 1 and summary["labels"]["model"] == "unet"
    assert (out / "metrics" / "clinical.jsonl").is_file() and (out / "metrics" / "table.md").is_file()
    assert list(out.glob("wandb/offline-run-*")), "W&B offline run directory missing"
    assert list((out / "images").glob("test_*.png"))

    eval_cfg = compose_cfg("eval", [f"ckpt_path={best}", "logger=csv"], tmp_path / "eval", cfg.data.data_dir)
    eval_metrics, _ = evaluate.run(eval_cfg)
    ev = json.loads((tmp_path / "eval" / "metrics" / "summary.json").read_text())
    assert ev["metrics"]["dice"]["mean"] == pytest.approx(summary["metrics"]["dice"]["mean"], abs=1e-6)

    # the same evaluation with image metrics and clinical parameters in a background process
    overrides = [f"ckpt_path={best}", "logger=csv", "callbacks.metrics_report.workers=1"]
    bg_cfg = compose_cfg("eval", overrides, tmp_path / "eval_bg", cfg.data.data_dir)
    bg_metrics, objs = evaluate.run(bg_cfg)
    bg = pd.read_csv(tmp_path / "eval_bg" / "metrics" / "per_case.csv")
    inline = pd.read_csv(tmp_path / "eval" / "metrics" / "per_case.csv")
    cols = ["sample_id", "dice", "hd95_mm", "asd_mm", "nsd", "clinical_status"]
    pd.testing.assert_frame_equal(bg[cols], inline[cols])
    assert bg_metrics["test/dice"] == pytest.approx(eval_metrics["test/dice"], abs=1e-6)


def test_eval_missing_checkpoint_is_a_clear_error(tmp_path, embedded_small):
    cfg = compose_cfg("eval", [f"ckpt_path={tmp_path}/nope.ckpt"], tmp_path / "eval", embedded_small)
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        evaluate.run(cfg)


def _cli(args: list[str], tmp_path: Path, data_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "XRAY3D_LOG_DIR": str(tmp_path / "logs")}
    cmd = [sys.executable, str(ROOT / "train.py"), *args, f"data.data_dir={data_dir}", "data.prepare=null"]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_cli_multirun_over_models(tmp_path, embedded_small):
    res = _cli(["-m", "model=unet,attention_unet", "debug=fdr"], tmp_path, embedded_small)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = sorted(p.name for p in (tmp_path / "logs" / "train" / "multiruns").glob("*/*") if p.is_dir())
    assert runs == ["0_embedded_vertebra_unet", "1_embedded_vertebra_attention_unet"]


def test_cli_composes_overrides(tmp_path, embedded_small):
    res = _cli(
        ["model=attention_unet", "optimizer=adamw", "trainer.max_steps=2", "debug=limit", "logger=none"],
        tmp_path,
        embedded_small,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    resolved = next((tmp_path / "logs").rglob("config_resolved.yaml")).read_text()
    assert "AttentionUnet" in resolved and "AdamW" in resolved


def test_cli_unknown_model_fails_with_its_name(tmp_path, embedded_small):
    res = _cli(["model=unett"], tmp_path, embedded_small)
    assert res.returncode != 0 and "unett" in res.stderr


def test_interrupted_training_resumes_from_last_checkpoint(compose_train, tmp_path):
    cfg = compose_train("debug=limit", "logger=none", "trainer.max_steps=4", "test=false")
    train.run(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 4
    resumed = compose_train(
        "debug=limit", "logger=none", "trainer.max_steps=8", "test=false", f"ckpt_path={last}"
    )
    train.run(resumed)
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 8


def test_missing_dataset_fails_first_with_the_prepare_commands(tmp_path):
    """``train.py data=verse2019`` without the prepared data: exit 2 within seconds, the commands that prepare
    it, no traceback, and no run folder left behind."""
    env = {**os.environ, "WANDB_MODE": "disabled", "XRAY3D_LOG_DIR": str(tmp_path / "logs")}
    env["XRAY3D_DATA_DIR"] = str(tmp_path / "data")
    cmd = [sys.executable, str(ROOT / "train.py"), "model=swinunetr", "data=verse2019"]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "xray3d-download verse19" in res.stderr and "xray3d-prepare verse2019" in res.stderr
    assert str(tmp_path / "data" / "verse2019") in res.stderr and "Traceback" not in res.stderr
    assert not [p for p in (tmp_path / "logs").rglob("*") if p.is_file()]  # no orphan run folder


@pytest.mark.slow  # ~35 s; eval and robustness of the default model stay in the fast run
def test_eval_and_robustness_of_a_non_default_model_are_filed_under_it(tmp_path, embedded_small):
    """eval.py / xray3d-robustness take the network from the checkpoint's run: so do the run folder, the
    report labels and the W&B run name."""
    res = _cli(
        ["model=oned_concat", "trainer.max_steps=1", "test=false", "logger=none"], tmp_path, embedded_small
    )
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = next((tmp_path / "logs" / "train").rglob("last.ckpt"))
    common = [f"ckpt_path={ckpt}", f"data.data_dir={embedded_small}", "data.prepare=null"]
    for args in (
        [str(ROOT / "eval.py"), *common, "callbacks.images=null", "logger=wandb"],
        ["-m", "xray3d.pipeline.robustness", *common, "angles_deg=[0]", "logger=none"],
    ):
        env = {**os.environ, "WANDB_MODE": "disabled", "XRAY3D_LOG_DIR": str(tmp_path / "logs")}
        res = subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-3000:]
        out = res.stdout + res.stderr  # no third-party noise (xray3d/utils/quiet.py)
        for noise in (
            "LeafSpec",
            "💡 Tip",
            "anonymous setting",
            "dirpath has changed",
            "callbacks used to create",
        ):
            assert noise not in out, noise
    for task in ("eval", "robustness"):
        runs = list((tmp_path / "logs" / task / "embedded_vertebra").iterdir())
        assert [p.name for p in runs] == ["oned_concat"], runs
    resolved = next((tmp_path / "logs" / "eval").rglob("config_resolved.yaml")).read_text()
    assert "name: oned_concat_embedded_vertebra_s12345" in resolved  # the W&B run name
    assert "model: oned_concat" in resolved and "model: unet" not in resolved  # the report labels


def test_progress_lines_when_stdout_is_not_a_terminal(tmp_path, embedded_small):
    res = _cli(
        [
            "trainer.max_steps=4",
            "callbacks.progress.every_n_steps=2",
            "test=false",
            "logger=none",
            "debug=limit",
        ],
        tmp_path,
        embedded_small,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert "step 2/4  loss " in out and "it/s  ETA " in out and "step 4/4" in out


def test_a_run_shorter_than_an_epoch_validates_at_its_last_step(compose_train):
    # debug=limit: 8 samples per epoch, batch 2 -> 4 steps per epoch; stop after 2
    cfg = compose_train("debug=limit", "logger=none", "trainer.max_steps=2", "test=false")
    metrics, _ = train.run(cfg)
    assert "val/dice" in metrics and metrics["paths"]["best_checkpoint"]
