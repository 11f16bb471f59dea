"""Evaluation pipeline: load a checkpoint, run the test split, write per_case.csv + summary.json."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from xray3d import CONF_DIR
from xray3d.callbacks.metrics_report import MetricsReport
from xray3d.pipeline.preflight import check_data, run_or_exit
from xray3d.pipeline.train import _finish_wandb, build, print_report, report_paths
from xray3d.utils.instantiate import save_run_info
from xray3d.utils.runinfo import _train_config_of, train_choice

__all__ = ["run", "main", "train_choice"]

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> tuple[dict, dict]:
    """Evaluate ``cfg.ckpt_path`` on the test split of ``cfg.data``.

    The network architecture is taken from the training run's saved config when the checkpoint lives
    in a run directory (so ``python eval.py ckpt_path=...`` needs nothing else); ``use_train_model=false``
    uses ``cfg.model`` instead.
    """
    ckpt = Path(cfg.ckpt_path)
    if not ckpt.is_file():
        raise FileNotFoundError(
            f"ckpt_path={ckpt} does not exist; pass the path of a .ckpt written by train.py"
        )
    check_data(cfg)
    train_cfg_path = _train_config_of(ckpt)
    if train_cfg_path is not None and cfg.get("use_train_model", True):
        train_cfg = OmegaConf.load(train_cfg_path)
        with open_dict(cfg):
            cfg.model = train_cfg.model
        log.info("model config taken from %s", train_cfg_path)
    if OmegaConf.select(cfg, "model.net.autoencoder_ckpt") is not None:
        # A stage-2 (TL-embedding) checkpoint holds the frozen decoder's weights itself: do not depend on
        # the stage-1 file still being where training found it.
        with open_dict(cfg):
            cfg.model.net.autoencoder_ckpt = None
    save_run_info(cfg, cfg.paths.output_dir)
    objs = build(cfg)
    model_name = train_choice(ckpt, "model") if cfg.get("use_train_model", True) else None
    for cb in objs["callbacks"]:
        if isinstance(cb, MetricsReport):
            cb.ckpt_path = str(ckpt)
            if model_name:
                cb.labels["model"] = model_name
    try:
        objs["trainer"].test(
            objs["model"], datamodule=objs["datamodule"], ckpt_path=str(ckpt), weights_only=False
        )
        metrics = {k: float(v) for k, v in objs["trainer"].callback_metrics.items()}
        paths = report_paths(objs, cfg.paths.output_dir)
        paths.pop("best_checkpoint", None)
        paths.pop("last_checkpoint", None)
        paths["evaluated_ckpt"] = str(ckpt)
        print_report(paths, objs["callbacks"])
        metrics["paths"] = paths
        return metrics, objs
    finally:
        _finish_wandb(objs["loggers"])


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    """Hydra entry point (``python eval.py ckpt_path=...`` / ``xray3d-eval ...``)."""
    run_or_exit(run, cfg)
