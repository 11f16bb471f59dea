"""Write the evaluation report of a test run (per-case CSV, summary, tables, plots) and mirror it to W&B.

A thin adapter over the evaluation engine (:mod:`xray3d.evaluation.engine`): in ``setup`` it tells the
LightningModule how to evaluate the test cases (clinical measurement of the datamodule's anatomy, its
ground-truth cache, background workers); the module evaluates them and gathers the rows of every DDP
rank; at ``on_test_end`` rank 0 alone writes the report.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import pandas as pd
from lightning.pytorch.loggers import WandbLogger

from xray3d.baselines import mean_shape_baseline
from xray3d.clinical.cache import MeasurementCache, dataset_cache_dir
from xray3d.evaluation.engine import mirror_to_wandb, write_run_report
from xray3d.metrics.image import binary_metrics

__all__ = ["MetricsReport"]

log = logging.getLogger(__name__)


class MetricsReport(L.Callback):
    """At the end of a test run write its evaluation report into ``<output_dir>/metrics``.

    Files: ``per_case.csv`` (image metrics, clinical parameters of ground truth and prediction and their
    errors, sample metadata, mean-shape baseline Dice), ``clinical.jsonl``, ``summary.json`` and the
    tables/plots of :func:`~xray3d.metrics.evaluation_report.write_evaluation_report`. Everything is
    mirrored to W&B when a WandbLogger is attached; the files on disk are the primary copy. Under DDP
    every case appears once and only rank 0 writes.

    Args:
        output_dir: run directory.
        config_digest: digest of the composed config (recorded in the summary).
        labels: constant columns of the report rows (e.g. model and data config names).
        clinical: measure clinical parameters when the datamodule provides a measurement.
        plots: write PNG plots.
        n_boot: bootstrap resamples of the CIs.
        workers: background processes per rank that evaluate each test case (image metrics and clinical
            parameters) while the model predicts the next batches; 0 = inline after each batch.
        gt_cache: keep the ground truths' clinical measurements in ``<data_dir>/.clinical_cache``
            (:class:`~xray3d.clinical.cache.MeasurementCache`).
    """

    def __init__(
        self,
        output_dir: str,
        config_digest: str = "",
        labels: dict | None = None,
        clinical: bool = True,
        plots: bool = True,
        n_boot: int = 1000,
        workers: int = 0,
        gt_cache: bool = True,
    ) -> None:
        if workers < 0:
            raise ValueError(f"callbacks.metrics_report.workers must be >= 0, got {workers}")
        self.output_dir = Path(output_dir) / "metrics"
        self.config_digest = config_digest
        self.labels = {str(k): str(v) for k, v in (labels or {}).items()}
        self.clinical = clinical
        self.plots = plots
        self.n_boot = n_boot
        self.workers = int(workers)
        self.gt_cache = gt_cache
        self.ckpt_path: str | None = None
        self.last_summary: dict | None = None
        self._gt_cache_dir: str | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Configure the module's test evaluation: clinical measurement, ground-truth cache, workers."""
        if stage != "test" or not hasattr(pl_module, "configure_evaluation"):
            return
        dm = trainer.datamodule
        measure = getattr(dm, "clinical", None) if self.clinical and dm is not None else None
        gt_measure, self._gt_cache_dir = None, None
        data_dir = getattr(dm, "data_dir", None)
        if measure is not None and self.gt_cache and data_dir is not None:
            gt_measure = MeasurementCache(dataset_cache_dir(data_dir), measure)
            self._gt_cache_dir = str(gt_measure.dir)
        pl_module.configure_evaluation("test", measure=measure, gt_measure=gt_measure, workers=self.workers)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if hasattr(pl_module, "close_evaluation"):
            pl_module.close_evaluation()

    def _baseline(self, dm, test_ds, sample_ids: list[str]) -> tuple[dict[str, float] | None, dict | None]:
        """Mean-shape baseline Dice of each test case (streamed and cached with the dataset)."""
        try:
            train_ds = dm.dataset("train")
            shape = mean_shape_baseline(train_ds)
        except Exception as exc:  # no training split (e.g. external test set): report without baseline
            log.info("mean-shape baseline not computed: %s", exc)
            return None, None
        index = {sid: i for i, sid in enumerate(test_ds.sample_ids)}
        spacing = float(getattr(dm, "spacing_mm", 1.0))
        dice = {
            sid: binary_metrics(shape, test_ds.mask_array(index[sid]), spacing)["dice"]
            for sid in sample_ids
            if sid in index
        }
        return dice, {"name": "mean_shape", "n_train_masks": len(train_ds)}

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        rows = list(getattr(pl_module, "case_rows", {}).get("test", []))
        if not rows:
            log.warning("no test cases were evaluated; no report written")
            return
        dm = trainer.datamodule
        metadata, baseline_dice, baseline_info = None, None, None
        if dm is not None and hasattr(dm, "dataset"):
            test_ds = dm.dataset("test")
            metadata = pd.DataFrame(test_ds.metadata)
            baseline_dice, baseline_info = self._baseline(dm, test_ds, [str(r["sample_id"]) for r in rows])
        labels = dict(self.labels)
        anatomy = getattr(dm, "anatomy", None)
        if anatomy and "anatomy" not in labels and (metadata is None or "anatomy" not in metadata):
            labels["anatomy"] = str(anatomy)
        stats = getattr(pl_module, "eval_stats", {}).get("test", {})
        cached = self._gt_cache_dir is not None
        extra = {
            "ckpt_path": self.ckpt_path,
            "config_digest": self.config_digest,
            "world_size": int(trainer.world_size),
            # post-processing applied to the predictions (chosen on validation; rows hold dice_raw without it)
            "postprocess": getattr(pl_module, "postprocess_choice", None),
            "clinical_gt_cache": self._gt_cache_dir,
            # inline measurements only (background workers hold their own copies of the counters)
            "clinical_gt_cache_hits": stats.get("clinical_gt_cache_hits") if cached else None,
            "clinical_gt_cache_misses": stats.get("clinical_gt_cache_misses") if cached else None,
        }
        summary, report, df = write_run_report(
            rows,
            self.output_dir,
            metadata=metadata,
            baseline_dice=baseline_dice,
            baseline_info=baseline_info,
            labels=labels,
            group_by=tuple(getattr(dm, "group_by", ()) or ()),
            n_boot=self.n_boot,
            plots=self.plots,
            extra=extra,
        )
        self.last_summary = summary
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                mirror_to_wandb(logger, df, summary, report)
