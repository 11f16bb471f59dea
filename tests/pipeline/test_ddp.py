"""DDP as a user runs it: ``train.py trainer=ddp`` with 2 CPU processes (gloo) on the real embedded CT.

Every test case is evaluated exactly once (the distributed sampler pads the last rank with repeats), rank 0
alone writes the report, and the result equals a single-process ``eval.py`` of the same checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from ..conftest import run_python

ROOT = Path(__file__).resolve().parents[2]
METRICS = ["dice", "hd95_mm", "asd_mm", "nsd"]


@pytest.fixture(scope="module")
def ddp_dataset(embedded_small, tmp_path_factory) -> Path:
    """The small real dataset with 3 test and 3 validation cases: 2 ranks must pad (and repeat) one.

    The extra rows are copies of the validation/test vertebrae under new sample ids (same files).
    """
    root = tmp_path_factory.mktemp("ddp_data")
    for item in embedded_small.iterdir():
        if item.name.startswith("."):
            continue
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, root / item.name)
    df = pd.read_csv(root / "manifest.csv", dtype={"sample_id": str, "level": str, "split": str})
    extra = []
    for split in ("val", "test"):
        src = df[df["split"] == split].iloc[0]
        for k in (1, 2):
            extra.append({**src.to_dict(), "sample_id": f"{src['sample_id']}-copy{k}"})
    df = pd.concat([df, pd.DataFrame(extra)], ignore_index=True)
    df.to_csv(root / "manifest.csv", index=False)
    return root


def _train_args(data_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        str(ROOT / "train.py"),
        f"data.data_dir={data_dir}",
        "data.prepare=null",
        "trainer.num_sanity_val_steps=0",
        "data.batch_size=1",
        "data.train_samples_per_epoch=4",
        "logger=csv",
        "callbacks.images=null",
        "+callbacks.metrics_report.n_boot=50",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def _eval_args(ckpt, data_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        str(ROOT / "eval.py"),
        f"ckpt_path={ckpt}",
        f"data.data_dir={data_dir}",
        "data.prepare=null",
        "callbacks.images=null",
        "+callbacks.metrics_report.n_boot=50",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def test_ddp_two_cpu_processes_train_test_equals_single_process_eval(ddp_dataset, tmp_path):
    run_dir = tmp_path / "ddp_run"
    args = _train_args(
        ddp_dataset,
        run_dir,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.max_steps=3",
    )
    res = run_python(args, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]

    per_case = pd.read_csv(run_dir / "metrics" / "per_case.csv", dtype={"sample_id": str})
    test_ids = sorted(
        pd.read_csv(ddp_dataset / "manifest.csv", dtype={"sample_id": str}).query("split == 'test'")[
            "sample_id"
        ]
    )
    assert sorted(per_case["sample_id"]) == test_ids  # every test case exactly once
    summary = json.loads((run_dir / "metrics" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["n_cases"] == 3
    # 4 training samples per epoch in total: 2 per rank, batch 1 -> 2 steps per epoch -> val after step 2
    metrics = pd.read_csv(next(run_dir.glob("csv/**/metrics.csv")))
    val_steps = metrics.dropna(subset=["val/dice"])["step"].tolist()
    assert val_steps[0] == 1, val_steps  # validation after the 2nd step (steps count from 0), not every step
    assert "train/loss_epoch" in metrics.columns

    # single-process evaluation of the checkpoint the DDP run tested
    ckpt = summary["ckpt_path"]
    assert ckpt and Path(ckpt).is_file()
    eval_dir = tmp_path / "eval_run"
    res = run_python(_eval_args(ckpt, ddp_dataset, eval_dir, "logger=csv"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-5000:]
    single = pd.read_csv(eval_dir / "metrics" / "per_case.csv", dtype={"sample_id": str})
    cols = ["sample_id", *METRICS, "clinical_status"]
    pd.testing.assert_frame_equal(
        per_case[cols].sort_values("sample_id").reset_index(drop=True),
        single[cols].sort_values("sample_id").reset_index(drop=True),
    )
    single_summary = json.loads((eval_dir / "metrics" / "summary.json").read_text())
    for key in METRICS:
        assert summary["metrics"][key]["mean"] == pytest.approx(
            single_summary["metrics"][key]["mean"], rel=1e-9
        )


@pytest.mark.slow  # trainer.test under DDP is the path the default-suite DDP train + test already runs
def test_ddp_eval_matches_single_process(ddp_dataset, tmp_path):
    """eval.py itself under DDP: same per-case rows as one process."""
    run_dir = tmp_path / "train"
    args = _train_args(ddp_dataset, run_dir, "test=false", "trainer.max_steps=1")
    res = run_python(args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 1
    outs = {}
    for name, extra in (
        ("one", []),
        ("ddp", ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]),
    ):
        out = tmp_path / f"eval_{name}"
        args = _eval_args(ckpt, ddp_dataset, out, "logger=none", "callbacks.metrics_report.clinical=false")
        res = run_python([*args, "callbacks.metrics_report.plots=false", *extra], cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-5000:]
        outs[name] = pd.read_csv(out / "metrics" / "per_case.csv", dtype={"sample_id": str})
    assert len(outs["ddp"]) == 3 and outs["ddp"]["sample_id"].is_unique
    pd.testing.assert_frame_equal(outs["ddp"][["sample_id", *METRICS]], outs["one"][["sample_id", *METRICS]])


def test_ddp_robustness_scores_each_case_once_per_angle(ddp_dataset, tmp_path):
    """xray3d-robustness under trainer=ddp (2 CPU processes): each case once per angle, same as 1 process."""
    run_dir = tmp_path / "train"
    res = run_python(_train_args(ddp_dataset, run_dir, "test=false", "trainer.max_steps=1"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    outs = {}
    for name, extra in (
        ("one", []),
        ("ddp", ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]),
    ):
        out = tmp_path / f"rob_{name}"
        args = ["-m", "xray3d.pipeline.robustness", f"ckpt_path={ckpt}", f"data.data_dir={ddp_dataset}"]
        args += ["data.prepare=null", "angles_deg=[0,5]", "logger=none", f"hydra.run.dir={out}", *extra]
        res = run_python(args, cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-5000:]
        outs[name] = pd.read_csv(out / "robustness" / "per_case.csv", dtype={"sample_id": str})
    assert len(outs["ddp"]) == 6 and not outs["ddp"].duplicated(["sample_id", "angle_deg"]).any()
    pd.testing.assert_frame_equal(outs["ddp"], outs["one"])
