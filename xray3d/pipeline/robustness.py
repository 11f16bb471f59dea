"""Angle-perturbation robustness: evaluate a checkpoint with one or both views rotated (spec §2.4, §8.4).

``python -m xray3d.pipeline.robustness ckpt_path=... [angles_deg=[0,1,2,5,10]] [views=[lat]]``

For every angle the test split's CT ROIs are re-rendered on the fly with the chosen views rotated by
that angle about ``rotation_axis`` (index into the ZXY Euler angles of the view's pose: 0 turns the
C-arm about the patient's long axis, which is how the reference perturbed its LAT view, ``rz += θ``), and
the checkpoint's predictions are scored with the image metrics. The reference perturbed only the LAT view
(``views=[lat]``, the default); ``views=[ap,lat]`` rotates both.

Writes into the run directory: ``robustness/per_case.csv`` (one row per case and angle),
``robustness/table.md`` / ``table.tex`` (mean [95 % bootstrap CI] per angle) and ``robustness/curve.png``
(mean Dice and HD95 against the angle).
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from xray3d import CONF_DIR
from xray3d.data.io import write_csv_atomic
from xray3d.metrics.plots import robustness_curve
from xray3d.metrics.report import summary_table, to_markdown, write_table
from xray3d.pipeline.evaluate import _train_config_of, train_choice
from xray3d.utils.instantiate import mirror_to_wandb, save_run_info

__all__ = ["run", "main", "VIEW_INDEX"]

log = logging.getLogger(__name__)
VIEW_INDEX = {"ap": 0, "lat": 1}


def _load_model(cfg: DictConfig, ckpt: Path) -> torch.nn.Module:
    """Build the model from the training run's config (when found) and load the checkpoint's weights."""
    train_cfg_path = _train_config_of(ckpt)
    with open_dict(cfg):
        if train_cfg_path is not None and cfg.get("use_train_model", True):
            cfg.model = OmegaConf.load(train_cfg_path).model
        if OmegaConf.select(cfg, "model.net.autoencoder_ckpt") is not None:
            cfg.model.net.autoencoder_ckpt = None  # the checkpoint holds the frozen decoder itself
    model = hydra.utils.instantiate(cfg.model, optimizer=hydra.utils.instantiate(cfg.optimizer))
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    model.load_state_dict(state["state_dict"] if "state_dict" in state else state)
    return model.eval()


def _metrics(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "sample_id" and not k.startswith("_")}


def run(cfg: DictConfig) -> pd.DataFrame:
    """Score ``cfg.ckpt_path`` on the test split at every angle of ``cfg.angles_deg``.

    Each angle is one ``Trainer.test`` of the configured trainer (``trainer=ddp`` spreads the cases over
    the ranks; every case is scored once, and rank 0 writes the results).

    Returns:
        The per-case rows (``angle_deg`` column added).
    """
    ckpt = Path(cfg.ckpt_path)
    if not ckpt.is_file():
        raise FileNotFoundError(
            f"ckpt_path={ckpt} does not exist; pass the path of a .ckpt written by train.py"
        )
    unknown = [v for v in cfg.views if v not in VIEW_INDEX]
    if unknown or not cfg.views:
        raise ValueError(f"views must be a non-empty subset of {sorted(VIEW_INDEX)}, got {list(cfg.views)}")
    if cfg.rotation_axis not in (0, 1, 2):
        raise ValueError(f"rotation_axis must be 0, 1 or 2 (ZXY Euler angle index), got {cfg.rotation_axis}")
    save_run_info(cfg, cfg.paths.output_dir)
    model = _load_model(cfg, ckpt)
    dm = hydra.utils.instantiate(cfg.data)
    trainer_cfg = cfg.trainer
    if not cfg.get("use_gpu", True):
        trainer_cfg = OmegaConf.merge(trainer_cfg, {"accelerator": "cpu"})
    trainer = hydra.utils.instantiate(
        trainer_cfg, callbacks=[], logger=False, enable_checkpointing=False, enable_model_summary=False
    )
    rows: list[dict] = []
    for angle in cfg.angles_deg:
        offsets = torch.zeros(2, 3)
        for view in cfg.views:
            offsets[VIEW_INDEX[view], cfg.rotation_axis] = float(angle)
        dm.eval_rotation_offsets_deg = offsets
        trainer.test(model, datamodule=dm, verbose=False)
        rows += [
            {"sample_id": r["sample_id"], "angle_deg": float(angle), **_metrics(r)}
            for r in model.case_rows["test"]
        ]
        log.info("angle %s deg: %d cases", angle, len(model.case_rows["test"]))
    if not trainer.is_global_zero:
        return pd.DataFrame(rows)
    df = pd.DataFrame(rows)
    df["model"] = train_choice(ckpt, "model") or "unknown"
    df["anatomy"] = str(dm.anatomy)
    df["views"] = "+".join(cfg.views)
    out = Path(cfg.paths.output_dir) / "robustness"
    write_csv_atomic(df, out / "per_case.csv")
    table = summary_table(df, group_cols=("angle_deg",), seed=cfg.seed)
    write_table(table, out / "table")
    curve = robustness_curve(
        df,
        out / "curve.png",
        xlabel=f"rotation of {'+'.join(cfg.views)} (deg)",
        title=f"angle perturbation: {ckpt.name}",
        seed=cfg.seed,
    )
    mirror_to_wandb(cfg, {"robustness/per_case": df, "robustness/table": table}, {"robustness/curve": curve})
    print(to_markdown(table))
    print(f"robustness results: {out}")
    return df


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="robustness")
def main(cfg: DictConfig) -> None:
    """Hydra entry point (``python -m xray3d.pipeline.robustness ckpt_path=...``)."""
    run(cfg)


if __name__ == "__main__":
    main()
