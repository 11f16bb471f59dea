"""Domain-shift evaluation: one checkpoint, its own test split and other datasets, side by side.

``python -m xray3d.pipeline.domain_shift ckpt_path=.../checkpoints/x.ckpt targets=[ctpelvic1k]``
(``xray3d-domain-shift``). The in-domain evaluation uses the training run's own data config (from the
run's ``.hydra/config.yaml``, overrides included); every target is the named ``conf/data`` config with
its test split. Targets must use the training grid (grid size and spacing), since the network was
trained on it.

Each evaluation is a complete ``eval.py`` run in ``<output_dir>/<domain>/`` (per-case rows, clinical
parameters, subgroup tables of the target's metadata, e.g. CTPelvic1K subsets). On top of them this
command writes into ``<output_dir>/domain_shift/``: ``per_case.csv`` (all domains, ``domain`` column
``in:<data>`` / ``out:<data>``), ``table.md/.tex`` (mean [95 % CI] per domain), ``subgroups.md`` (per
domain and metadata group), ``clinical.md`` (median clinical errors per domain) and ``boxplot.png``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import pandas as pd
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from xray3d import CONF_DIR
from xray3d.data.io import write_csv_atomic, write_text_atomic
from xray3d.metrics.image import METRIC_KEYS
from xray3d.metrics.plots import box_plot
from xray3d.metrics.report import (
    clinical_table,
    error_columns,
    summary_table,
    to_markdown,
    write_table,
)
from xray3d.pipeline import evaluate
from xray3d.utils.instantiate import mirror_to_wandb

__all__ = ["run", "main"]

log = logging.getLogger(__name__)

_OWN_KEYS = ("targets", "in_domain", "data", "ckpt_path")


def _passthrough(overrides: list[str]) -> list[str]:
    """The user's overrides passed on to the sub-evaluations (not data= / targets / in_domain / ckpt_path).

    ``data.<key>=...`` overrides are kept: they apply to the targets (the in-domain evaluation uses the
    training run's data config as it was).
    """
    out = []
    for o in overrides:
        key = o.lstrip("+~").split("=", 1)[0]
        if key not in _OWN_KEYS and not key.startswith("hydra"):
            out.append(o)
    return out


def _compose_eval(data: str, ckpt: Path, out_dir: Path, overrides: list[str]) -> DictConfig:
    overrides = [f"data={data}", f"ckpt_path={ckpt}", *overrides]
    if GlobalHydra.instance().is_initialized():  # inside the @hydra.main job
        cfg = compose(config_name="eval", overrides=overrides, return_hydra_config=True)
    else:  # called as a library function
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name="eval", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out_dir)
        cfg.hydra.job.num = 0
        cfg.paths.output_dir = str(out_dir)
    HydraConfig().set_config(cfg)  # ${hydra:...} interpolations of the sub-run resolve to its own choices
    with open_dict(cfg):
        del cfg["hydra"]  # like a @hydra.main job config
    return cfg


def run(cfg: DictConfig, overrides: list[str] | None = None) -> pd.DataFrame:
    """Evaluate ``cfg.ckpt_path`` in domain and on every ``cfg.targets`` data config.

    Args:
        cfg: composed ``domain_shift`` config.
        overrides: command-line overrides passed on to each evaluation (default: this run's).

    Returns:
        All per-case rows with a ``domain`` column.
    """
    ckpt = Path(cfg.ckpt_path)
    if not ckpt.is_file():
        raise FileNotFoundError(
            f"ckpt_path={ckpt} does not exist; pass the path of a .ckpt written by train.py"
        )
    targets = list(cfg.targets or [])
    if not targets:
        raise ValueError("targets is empty: name at least one data config, e.g. targets=[ctpelvic1k]")
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    if overrides is None:
        overrides = list(hydra_cfg.overrides.task) if hydra_cfg is not None else []
    passthrough = _passthrough(overrides)
    root = Path(cfg.paths.output_dir)
    train_cfg_path = evaluate._train_config_of(ckpt)
    train_cfg = OmegaConf.load(train_cfg_path) if train_cfg_path is not None else None
    train_data = evaluate.train_choice(ckpt, "data")
    if train_cfg is None or train_data is None:
        raise FileNotFoundError(
            f"{ckpt} is not inside a training run directory (no .hydra/config.yaml and hydra.yaml found "
            "next to it): the in-domain data config and training grid are unknown"
        )
    grid = (int(train_cfg.data.grid_size), float(train_cfg.data.spacing_mm))
    domains: list[tuple[str, str]] = [("in", train_data)] if cfg.in_domain else []
    domains += [("out", t) for t in targets]
    frames, group_cols = [], set()
    is_zero = True
    for kind, data in domains:
        out_dir = root / f"{kind}_{data}"
        sub = _compose_eval(data, ckpt, out_dir, passthrough)
        if kind == "in":
            with open_dict(sub):
                sub.data = train_cfg.data  # the exact training data config, its overrides included
        target_grid = (int(sub.data.grid_size), float(sub.data.spacing_mm))
        if target_grid != grid:
            raise ValueError(
                f"data={data} uses a {target_grid[0]}^3 grid at {target_grid[1]} mm but the model was "
                f"trained on {grid[0]}^3 at {grid[1]} mm ({train_data}); pick a target with the training grid"
            )
        log.info("domain shift: evaluating %s on %s (%s domain)", ckpt.name, data, kind)
        _, objs = evaluate.run(sub)
        if not objs["trainer"].is_global_zero:  # under DDP rank 0 alone writes and combines the reports
            is_zero = False
            continue
        df = pd.read_csv(out_dir / "metrics" / "per_case.csv")
        df["domain"] = f"{kind}:{data}"
        frames.append(df)
        group_cols.update(sub.data.get("group_by", []) or [])
    if not is_zero:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    out = root / "domain_shift"
    write_csv_atomic(df, out / "per_case.csv")
    metrics = [m for m in METRIC_KEYS if m in df]
    table = summary_table(df, group_cols=("domain",), metrics=metrics, seed=cfg.seed)
    write_table(table, out / "table")
    sub_tables = []
    for col in sorted(group_cols):
        if col in df and df[col].notna().any():
            t = summary_table(df, group_cols=("domain", col), metrics=metrics, seed=cfg.seed)
            sub_tables.append(t.rename(columns={col: "group"}).assign(group_by=col))
    if sub_tables:
        write_text_atomic(
            to_markdown(pd.concat(sub_tables, ignore_index=True).fillna("")), out / "subgroups.md"
        )
    if error_columns(df):
        write_text_atomic(to_markdown(clinical_table(df, ("domain",))), out / "clinical.md")
    box = box_plot(df, metrics, out / "boxplot.png", by="domain", title=f"domain shift: {ckpt.name}")
    mirror_to_wandb(
        cfg, {"domain_shift/per_case": df, "domain_shift/table": table}, {"domain_shift/boxplot": box}
    )
    print(to_markdown(table))
    print(f"domain-shift results: {out}")
    return df


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="domain_shift")
def main(cfg: DictConfig) -> None:
    """Hydra entry point (``python -m xray3d.pipeline.domain_shift ckpt_path=... targets=[...]``)."""
    run(cfg)


if __name__ == "__main__":
    main()
