"""Write the per-case metrics of a test run to disk (CSV + summary.json) and mirror them to W&B."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
from lightning.pytorch.loggers import WandbLogger

from xray3d.baselines import mean_shape
from xray3d.data.io import write_csv_atomic, write_json_atomic
from xray3d.metrics.image import METRIC_KEYS, binary_metrics

__all__ = ["MetricsReport", "summarize"]

log = logging.getLogger(__name__)


def summarize(df: pd.DataFrame, keys: tuple[str, ...] = METRIC_KEYS) -> dict:
    """Mean, std, median, min, max and counts per metric; inf (empty prediction) is counted, not averaged."""
    out: dict[str, dict] = {}
    for key in keys:
        if key not in df:
            continue
        vals = df[key].astype(float).to_numpy()
        finite = vals[np.isfinite(vals)]
        out[key] = {
            "mean": float(finite.mean()) if len(finite) else math.nan,
            "std": float(finite.std(ddof=1)) if len(finite) > 1 else math.nan,
            "median": float(np.median(finite)) if len(finite) else math.nan,
            "min": float(finite.min()) if len(finite) else math.nan,
            "max": float(finite.max()) if len(finite) else math.nan,
            "n": int(len(vals)),
            "n_nonfinite": int(len(vals) - len(finite)),
        }
    return out


class MetricsReport(L.Callback):
    """At the end of a test epoch write ``metrics/per_case.csv`` and ``metrics/summary.json``.

    The per-case rows carry the sample metadata of the manifest and, when the datamodule has a
    training split, the mean-shape baseline's Dice on the same case.

    Args:
        output_dir: run directory.
        config_digest: digest of the composed config (recorded in the summary).
    """

    def __init__(self, output_dir: str, config_digest: str = "") -> None:
        self.output_dir = Path(output_dir) / "metrics"
        self.config_digest = config_digest
        self.ckpt_path: str | None = None
        self.last_summary: dict | None = None

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rows = list(pl_module.case_rows.get("test", []))
        if not rows:
            log.warning("no test cases were evaluated; no report written")
            return
        df = pd.DataFrame(rows)
        dm = trainer.datamodule
        baseline = None
        if dm is not None and hasattr(dm, "dataset"):
            test_ds = dm.dataset("test")
            meta = pd.DataFrame(test_ds.metadata).drop(columns=["ct_path", "mask_path"], errors="ignore")
            df = df.merge(meta, on="sample_id", how="left")
            try:
                train_ds = dm.dataset("train")
                shape = mean_shape(s["mask"] for s in train_ds.samples)
                by_id = {s["sample_id"]: s for s in test_ds.samples}
                df["baseline_dice"] = [
                    binary_metrics(shape, by_id[sid]["mask"][0].numpy(), by_id[sid]["spacing_mm"])["dice"]
                    for sid in df["sample_id"]
                ]
                baseline = {
                    "name": "mean_shape",
                    "n_train_masks": len(train_ds),
                    **summarize(df, ("baseline_dice",)),
                }
            except Exception as exc:  # no training split (e.g. external test set): report without baseline
                log.info("mean-shape baseline not computed: %s", exc)
        summary = {
            "n_cases": len(df),
            "metrics": summarize(df),
            "n_empty_pred": int(df["empty_pred"].sum()),
            "ckpt_path": self.ckpt_path,
            "config_digest": self.config_digest,
            "baseline": baseline,
            "per_case_csv": str(self.output_dir / "per_case.csv"),
        }
        write_csv_atomic(df, self.output_dir / "per_case.csv")
        write_json_atomic(summary, self.output_dir / "summary.json")
        self.last_summary = summary
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                table = df.replace([np.inf, -np.inf], np.nan)
                logger.log_table(key="test/per_case", dataframe=table)
                flat = {
                    f"test_summary/{k}_{s}": v[s]
                    for k, v in summary["metrics"].items()
                    for s in ("mean", "median")
                }
                if baseline:
                    flat["test_summary/baseline_dice_mean"] = baseline["baseline_dice"]["mean"]
                logger.experiment.summary.update(flat)
