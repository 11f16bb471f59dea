"""MetricsReport + evaluation engine: per test case image metrics and clinical parameters, inline or in
background processes, written by rank 0."""

from __future__ import annotations

import json
import multiprocessing
import os
from functools import partial
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from xray3d.callbacks.metrics_report import MetricsReport
from xray3d.clinical.base import validate_mask, voxel_points_mm
from xray3d.evaluation.engine import CaseEvaluator, evaluate_case, gather_cases
from xray3d.metrics.image import binary_metrics


def centre_measure(mask, affine, crash_in_worker: bool = False):
    """Centroid (world mm) and voxel count; optionally kills a worker process (not the main one)."""
    if crash_in_worker and multiprocessing.current_process().name != "MainProcess":
        os._exit(3)
    m = validate_mask(mask, affine)
    return {"centre_xyz_mm": voxel_points_mm(m, affine).mean(0).tolist(), "size_mm3": float(m.sum())}


def _batch(shifts: list[int], start: int):
    gt = torch.zeros(len(shifts), 1, 16, 16, 16)
    gt[:, :, 4:8, 4:8, 4:8] = 1
    pred = torch.stack([torch.roll(g, s, dims=1) for g, s in zip(gt, shifts, strict=True)]) > 0.5
    if 0 in shifts:  # an empty prediction for the case with shift 0
        pred[shifts.index(0)] = False
    batch = {
        "mask": gt,
        "affine": torch.eye(4, dtype=torch.float64).repeat(len(shifts), 1, 1) * 2.0,
        "sample_id": [f"c{start + i}" for i in range(len(shifts))],
        "spacing_mm": torch.full((len(shifts),), 2.0),
    }
    return batch, {"pred": pred}


class FakeModule:
    """What the callback needs of the LightningModule: evaluation options in, gathered rows out."""

    def __init__(self) -> None:
        self.case_rows: dict = {"test": []}
        self.eval_stats: dict = {}
        self.options: dict = {}

    def configure_evaluation(self, stage: str, **options) -> None:
        self.options[stage] = options


def _run(tmp_path, measure, workers: int, data_dir=None):
    """The test loop's flow: callback setup -> engine per batch -> gathered rows -> report on rank 0."""
    dm = SimpleNamespace(clinical=measure, group_by=("grp",), anatomy="toy", data_dir=data_dir)
    trainer = SimpleNamespace(datamodule=dm, loggers=[], is_global_zero=True, world_size=1)
    module = FakeModule()
    cb = MetricsReport(str(tmp_path), labels={"model": "toy"}, workers=workers, n_boot=50)
    cb.setup(trainer, module, "test")
    assert module.options["test"]["workers"] == workers
    evaluator = CaseEvaluator(1.5, **module.options["test"])
    for k, shifts in enumerate(([1, 2], [3, 0])):
        batch, outputs = _batch(shifts, 2 * k)
        evaluator.add_batch(outputs["pred"], batch)
    rows, extras = gather_cases(evaluator.finish(), evaluator.stats())
    assert evaluator._pool is None  # the background pool is shut down
    module.case_rows["test"], module.eval_stats["test"] = rows, extras[0]
    assert [r["sample_id"] for r in rows] == ["c0", "c1", "c2", "c3"]
    cb.on_test_end(trainer, module)
    return pd.read_csv(tmp_path / "metrics" / "per_case.csv"), cb


@pytest.mark.parametrize("workers", [0, 1])
def test_clinical_rows_inline_and_in_background(tmp_path, workers):
    df, cb = _run(tmp_path, centre_measure, workers)
    df = df.set_index("sample_id")
    assert list(df["clinical_status"]) == ["ok", "ok", "ok", "pred_failed"]
    assert df["centre_err_mm"].tolist()[:3] == pytest.approx([2.0, 4.0, 6.0])  # shift voxels x 2 mm
    assert "0 foreground voxels" in df.loc["c3", "clinical_reason"]
    summary = json.loads((tmp_path / "metrics" / "summary.json").read_text())
    assert summary["clinical"]["n_pred_failed"] == 1 and summary["labels"] == {
        "model": "toy",
        "anatomy": "toy",
    }
    assert summary["dice_vs_clinical"][0]["error"] == "centre_err_mm"
    lines = (tmp_path / "metrics" / "clinical.jsonl").read_text().splitlines()
    assert [json.loads(x)["sample_id"] for x in lines] == ["c0", "c1", "c2", "c3"]


def test_a_dead_worker_does_not_lose_cases(tmp_path):
    df, _ = _run(tmp_path, partial(centre_measure, crash_in_worker=True), workers=1)
    assert df["centre_err_mm"].tolist()[:3] == pytest.approx([2.0, 4.0, 6.0])


def test_no_clinical_measurement_without_a_datamodule_measure(tmp_path):
    df, _ = _run(tmp_path, None, workers=1)
    assert "clinical_status" not in df and not (tmp_path / "metrics" / "clinical.jsonl").exists()
    assert np.isclose(df["dice"].iloc[0], 0.75)  # a 4-voxel cube shifted by one voxel


def test_background_image_metrics_equal_the_inline_ones(tmp_path):
    inline, _ = _run(tmp_path / "inline", centre_measure, workers=0)
    background, _ = _run(tmp_path / "bg", centre_measure, workers=2)
    cols = ["sample_id", "dice", "hd95_mm", "asd_mm", "nsd", "empty_pred", "centre_err_mm", "clinical_status"]
    pd.testing.assert_frame_equal(inline[cols], background[cols])
    assert inline["dice"].tolist() == pytest.approx([0.75, 0.5, 0.25, 0.0])
    assert bool(inline.loc[3, "empty_pred"])
    # without clinical parameters: the same image metrics, equal to binary_metrics of each case
    plain, _ = _run(tmp_path / "plain", None, workers=0)
    pd.testing.assert_frame_equal(inline[cols[:6]], plain[cols[:6]])
    batch, outputs = _batch([1, 2], 0)
    direct = binary_metrics(outputs["pred"][1, 0].numpy(), batch["mask"][1, 0].numpy() > 0.5, 2.0)
    assert plain.loc[1, "hd95_mm"] == pytest.approx(direct["hd95_mm"])


def test_evaluate_case_overlapped_equals_sequential():
    gt = np.zeros((20, 20, 20), bool)
    gt[5:14, 4:12, 6:15] = True
    pred = np.roll(gt, (1, -2, 1), (0, 1, 2))
    pred[8:10, 8:10, 8:10] = False
    args = (pred, gt, 1.5, 1.5, (centre_measure, np.diag([1.5, 1.5, 1.5, 1.0]), None))
    overlapped, sequential = evaluate_case(*args), evaluate_case(*args, overlap=False)
    assert overlapped == sequential and overlapped[1]["clinical_status"] == "ok"
    assert overlapped[0] == binary_metrics(pred, gt, 1.5, 1.5)
    with pytest.raises(ValueError):  # an error in the metrics thread reaches the caller
        evaluate_case(pred[:-1], gt, 1.5, 1.5, args[-1])


CALLS: list[int] = []


def counting_measure(mask, affine):
    CALLS.append(int(mask.sum()))
    return centre_measure(mask, affine)


def test_ground_truth_measurements_are_cached_in_the_data_dir(tmp_path):
    CALLS.clear()
    df1, cb = _run(tmp_path / "a", counting_measure, workers=0, data_dir=tmp_path / "data")
    n_first = len(CALLS)  # 4 predictions + the 4 identical ground truths measured once (then cached)
    df2, _ = _run(tmp_path / "b", counting_measure, workers=0, data_dir=tmp_path / "data")
    assert n_first == 5 and len(CALLS) - n_first == 4  # second evaluation: predictions only
    assert df1["centre_err_mm"].equals(df2["centre_err_mm"])
    assert len(list((tmp_path / "data" / ".clinical_cache").rglob("*.json"))) == 1
    summary = json.loads((tmp_path / "b" / "metrics" / "summary.json").read_text())
    assert summary["clinical_gt_cache"].startswith(str(tmp_path / "data" / ".clinical_cache"))


def test_ground_truth_cache_works_from_background_workers(tmp_path):
    df, _ = _run(tmp_path / "a", centre_measure, workers=1, data_dir=tmp_path / "data")
    assert df["centre_err_mm"].tolist()[:3] == pytest.approx([2.0, 4.0, 6.0])
    assert len(list((tmp_path / "data" / ".clinical_cache").rglob("*.json"))) == 1  # written by a worker
