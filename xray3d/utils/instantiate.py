"""Build lists of callbacks / loggers from Hydra config groups; record run information."""

from __future__ import annotations

import hashlib
import logging
import subprocess
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

__all__ = ["instantiate_list", "config_digest", "save_run_info", "log_hyperparameters", "mirror_to_wandb"]

log = logging.getLogger(__name__)


def instantiate_list(cfg: DictConfig | None, group: str) -> list:
    """Instantiate every ``_target_`` node of a dict-like config group (``None`` -> empty list)."""
    if cfg is None:
        return []
    if not isinstance(cfg, DictConfig):
        raise TypeError(
            f"config group '{group}' must be a mapping of name -> object config, got {type(cfg).__name__}"
        )
    objs = []
    for name, node in cfg.items():
        if isinstance(node, DictConfig) and "_target_" in node:
            log.info("instantiating %s.%s <%s>", group, name, node._target_)
            objs.append(hydra.utils.instantiate(node))
    return objs


def config_digest(cfg: DictConfig) -> str:
    """Short SHA-1 of the resolved config, without run-specific paths."""
    text = OmegaConf.to_yaml({k: v for k, v in cfg.items() if k not in ("paths", "hydra")}, resolve=False)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def save_run_info(cfg: DictConfig, output_dir: str | Path) -> None:
    """Write the resolved config and the git revision into the run directory (global rank 0 only)."""
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:
        return
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        sha = ""
    (out / "git_sha.txt").write_text((sha or "unknown") + "\n")


def log_hyperparameters(cfg: DictConfig, model, loggers: list) -> None:
    """Send the composed config (resolved) and the parameter counts to every logger."""
    if not loggers:
        return
    params = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "hydra"}
    params["model/params_total"] = sum(p.numel() for p in model.parameters())
    params["model/params_trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    params["config_digest"] = config_digest(cfg)
    for logger in loggers:
        logger.log_hyperparams(params)


def mirror_to_wandb(cfg: DictConfig, tables: dict, images: dict) -> bool:
    """Log tables (``key -> DataFrame``) and PNGs (``key -> path``) to the W&B logger of ``cfg.logger``.

    For commands that run outside a Lightning fit/test (robustness, domain shift): the files on disk are the
    primary copy, W&B (offline by default) the mirror. Returns True when a W&B logger was configured.
    """
    from lightning.pytorch.loggers import WandbLogger

    loggers = [lg for lg in instantiate_list(cfg.get("logger"), "logger") if isinstance(lg, WandbLogger)]
    if not loggers:
        return False
    import wandb

    try:
        for lg in loggers:
            for key, df in tables.items():
                lg.log_table(key=key, dataframe=df.replace([np.inf, -np.inf], np.nan))  # W&B rejects inf
            if images:
                lg.experiment.log({key: wandb.Image(str(path)) for key, path in images.items()})
    finally:
        wandb.finish()
    return True
