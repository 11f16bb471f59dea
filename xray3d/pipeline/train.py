"""Training pipeline: seed -> data -> model -> callbacks/loggers -> fit -> test best -> report."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from xray3d import CONF_DIR
from xray3d.callbacks.metrics_report import MetricsReport
from xray3d.pipeline.preflight import check_data, run_or_exit
from xray3d.utils.instantiate import config_digest, instantiate_list, log_hyperparameters, save_run_info

__all__ = ["run", "main"]

log = logging.getLogger(__name__)


def build(cfg: DictConfig) -> dict:
    """Instantiate datamodule, model, callbacks, loggers and trainer from the composed config."""
    datamodule = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(
        cfg.model,
        optimizer=hydra.utils.instantiate(cfg.optimizer),
        scheduler=hydra.utils.instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
    )
    callbacks = instantiate_list(cfg.get("callbacks"), "callbacks")
    loggers = instantiate_list(cfg.get("logger"), "logger")
    for cb in callbacks:
        if isinstance(cb, MetricsReport):
            cb.config_digest = config_digest(cfg)
    trainer_cfg = cfg.trainer
    on_cpu = trainer_cfg.get("accelerator") == "cpu" or (
        trainer_cfg.get("accelerator") in ("auto", None) and not torch.cuda.is_available()
    )
    if trainer_cfg.get("sync_batchnorm") and on_cpu:
        # torch's SyncBatchNorm needs CUDA: CPU DDP (gloo) keeps per-process BatchNorm statistics
        log.info("trainer.sync_batchnorm ignored on the CPU")
        trainer_cfg = OmegaConf.merge(trainer_cfg, {"sync_batchnorm": False})
    trainer = hydra.utils.instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False)
    return {
        "datamodule": datamodule,
        "model": model,
        "callbacks": callbacks,
        "loggers": loggers,
        "trainer": trainer,
    }


def report_paths(objs: dict, output_dir: str) -> dict:
    """Where the checkpoint, metrics and W&B run of a finished run are."""
    trainer: L.Trainer = objs["trainer"]
    ckpt = trainer.checkpoint_callback
    last = getattr(ckpt, "last_model_path", None) or None
    if getattr(ckpt, "dirpath", None) and (Path(ckpt.dirpath) / "last.ckpt").is_file():
        # trainer.test(ckpt_path="best") restores the callback state saved with the best checkpoint,
        # which can predate last.ckpt: look on disk.
        last = str(Path(ckpt.dirpath) / "last.ckpt")
    out = {
        "run_dir": output_dir,
        "best_checkpoint": getattr(ckpt, "best_model_path", None) or None,
        "last_checkpoint": last,
    }
    for cb in objs["callbacks"]:
        if isinstance(cb, MetricsReport):
            out["per_case_csv"] = str(cb.output_dir / "per_case.csv")
            out["summary_json"] = str(cb.output_dir / "summary.json")
    for lg in objs["loggers"]:
        if lg.__class__.__name__ == "WandbLogger":
            try:
                out["wandb_run_dir"] = str(Path(lg.experiment.dir).parent)
            except Exception:  # disabled mode has no directory
                out["wandb_run_dir"] = None
    return out


def print_report(paths: dict, callbacks: list) -> None:
    """Print where everything is, and the held-out result against the mean-shape baseline (rank 0)."""
    if rank_zero_only.rank != 0:
        return
    lines = ["", "=" * 72, "xray3d run finished"]
    for key, value in paths.items():
        if value:
            lines.append(f"  {key:<16} {value}")
    if paths.get("wandb_run_dir"):
        lines.append(f"  (W&B ran offline: upload with `wandb sync {paths['wandb_run_dir']}`)")
    for cb in callbacks:
        summary = getattr(cb, "last_summary", None)
        if summary:
            m = summary["metrics"]
            text = f"  held-out: n={summary['n_cases']} dice={m['dice']['mean']:.4f}"
            text += f" hd95_mm={m['hd95_mm']['mean']:.2f} asd_mm={m['asd_mm']['mean']:.2f}"
            text += f" nsd={m['nsd']['mean']:.4f}"
            if summary.get("baseline"):
                text += f" | mean-shape baseline dice={summary['baseline']['baseline_dice']['mean']:.4f}"
            lines.append(text)
            if summary.get("postprocess"):
                text = f"  post-processing (chosen on validation): {summary['postprocess']}"
                raw = (summary.get("metrics_without_postprocess") or {}).get("dice_raw")
                if raw:
                    text += f"; dice without it {raw['mean']:.4f}"
                lines.append(text)
            for name, c in (summary.get("cohorts") or {}).items():
                text = f"    {name}: n={c['n']} dice={c['dice']:.4f}"
                text += f" hd95_mm={c.get('hd95_mm', float('nan')):.2f}"
                if "baseline_dice" in c:
                    text += f" | mean-shape baseline dice={c['baseline_dice']:.4f}"
                    below = c.get("below_baseline") or []
                    text += f" | below baseline: {', '.join(below) if below else 'none'}"
                lines.append(text)
            clin = summary.get("clinical") or {}
            if clin:
                text = f"  clinical: measured {clin['n_measured']}/{clin['n_cases']}"
                text += (
                    f" (prediction failed {clin['n_pred_failed']}, ground truth failed {clin['n_gt_failed']})"
                )
                lines.append(text + "; tables, subgroups and plots in metrics/")
            for r in summary.get("subgroups_flagged") or []:
                lines.append(
                    f"  flagged subgroup {r['group_by']}={r['group']}: {r['metric']} mean {r['mean']:.3f} "
                    f"vs {r['aggregate_mean']:.3f} over all cases (n={r['n']})"
                )
    lines.append("=" * 72)
    print("\n".join(lines), flush=True)


def run(cfg: DictConfig) -> tuple[dict, dict]:
    """Train (and test) as configured.

    Returns:
        ``(metrics, objects)``: the logged metrics (train, val, test) and the instantiated objects;
        for a run dir that already finished, its stored metrics and ``{}`` (see :mod:`.resume`).
    """
    from xray3d.pipeline import resume  # skip finished runs, resume from last.ckpt (requeue, re-run sweep)

    check_data(cfg)  # a missing dataset fails before anything is built
    log.info(
        "datasets in %s, runs in %s (set XRAY3D_DATA_DIR / XRAY3D_LOG_DIR to change)",
        Path(str(cfg.paths.data_dir)).resolve(),
        Path(str(cfg.paths.log_dir)).resolve(),
    )
    if (done := resume.prepare_run(cfg)) is not None:
        return done, {}
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    save_run_info(cfg, cfg.paths.output_dir)
    objs = build(cfg)
    trainer: L.Trainer = objs["trainer"]
    try:
        log_hyperparameters(cfg, objs["model"], objs["loggers"])
        metrics: dict = {}
        if cfg.get("train", True):
            trainer.fit(
                objs["model"],
                datamodule=objs["datamodule"],
                ckpt_path=cfg.get("ckpt_path"),
                weights_only=False,
            )
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        if cfg.get("test", True):
            ckpt = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
            if ckpt is None:
                log.warning("no best checkpoint recorded; testing the current weights")
            for cb in objs["callbacks"]:
                if isinstance(cb, MetricsReport):
                    cb.ckpt_path = ckpt
            trainer.test(objs["model"], datamodule=objs["datamodule"], ckpt_path=ckpt, weights_only=False)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        paths = report_paths(objs, cfg.paths.output_dir)
        print_report(paths, objs["callbacks"])
        metrics["paths"] = paths
        resume.mark_finished(cfg.paths.output_dir, metrics, resume.run_digest(cfg))
        return metrics, objs
    finally:
        _finish_wandb(objs["loggers"])


def _finish_wandb(loggers: list) -> None:
    if any(lg.__class__.__name__ == "WandbLogger" for lg in loggers):
        import wandb

        wandb.finish()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point (``python train.py ...`` / ``xray3d-train ...``)."""
    metrics, _ = run_or_exit(run, cfg)
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None
