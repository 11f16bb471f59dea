"""Aggregate a multirun directory (all models × anatomies) into the benchmark tables and plots.

Usage::

    xray3d-aggregate multirun/2026-11-27/12-00-00 [--out DIR] [--n-boot 1000]

Every ``metrics/per_case.csv`` below the directory is one evaluated run (``train.py`` or ``eval.py``);
its model / data / anatomy labels come from the run's ``metrics/summary.json`` (falling back to the run's
``.hydra/hydra.yaml`` choices). When several runs share a (model, data) pair, the newest is used and the
others are listed as superseded. Every ``robustness/per_case.csv`` is collected as well.

Writes into ``--out`` (default ``<dir>/aggregate``):

* ``per_case.csv``: all rows with ``model``, ``data``, ``anatomy``, ``run`` columns;
* ``benchmark_table.md/.tex/.csv``: per anatomy × model, mean [95 % bootstrap CI] of Dice ×100, HD95,
  ASD, NSD (spec §8.2 format);
* ``overall_table.md``: per model, the mean of the anatomy means (spec §8.1);
* ``clinical_table.md`` (median clinical errors, spec §8.6) and ``dice_vs_clinical.csv`` per model × anatomy;
* ``boxplot_<anatomy>.png`` (one box per model per metric), ``dice_vs_clinical_<anatomy>_<model>.png``;
* ``robustness_table.md`` and ``robustness_<anatomy>.png`` (one curve per model) when robustness runs exist;
* ``runs.csv``: every run found, used or superseded or unreadable (with the reason).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from xray3d.data.io import write_csv_atomic, write_text_atomic
from xray3d.metrics.image import METRIC_KEYS
from xray3d.metrics.plots import box_plot, metric_vs_error_scatter, robustness_curve
from xray3d.metrics.report import (
    clinical_table,
    error_columns,
    metric_vs_errors,
    summary_stats,
    summary_table,
    to_markdown,
    write_table,
)

__all__ = ["aggregate", "find_runs", "main"]

log = logging.getLogger(__name__)
LABELS = ("model", "data", "anatomy")


def _labels(run_dir: Path) -> dict[str, str]:
    """model / data / anatomy of a run from its summary.json, else its Hydra choices."""
    labels: dict[str, str] = {}
    summary = run_dir / "metrics" / "summary.json"
    if summary.is_file():
        labels.update({k: str(v) for k, v in json.loads(summary.read_text()).get("labels", {}).items()})
    hydra_yaml = run_dir / ".hydra" / "hydra.yaml"
    if hydra_yaml.is_file():
        choices = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.runtime.choices", default=None) or {}
        for key in ("model", "data"):
            labels.setdefault(key, str(choices.get(key, "")) or "unknown")
    return labels


def find_runs(root: Path, kind: str = "metrics") -> list[tuple[Path, Path]]:
    """``(run_dir, per_case.csv)`` of every evaluated run below ``root`` (``kind``: metrics or robustness)."""
    return sorted((p.parent.parent, p) for p in Path(root).rglob(f"{kind}/per_case.csv"))


def _collect(root: Path, kind: str, runs_log: list[dict]) -> pd.DataFrame:
    frames: dict[tuple[str, str], tuple[float, pd.DataFrame, Path]] = {}
    for run_dir, csv in find_runs(root, kind):
        entry = {"kind": kind, "run": str(run_dir), "status": "used", "reason": ""}
        try:
            df = pd.read_csv(csv)
            if df.empty or "dice" not in df:
                raise ValueError("no rows or no dice column")
            labels = _labels(run_dir)
        except Exception as exc:
            entry.update(status="unreadable", reason=f"{type(exc).__name__}: {exc}")
            runs_log.append(entry)
            log.warning("skipping %s: %s", csv, exc)
            continue
        for key in LABELS:
            if key not in df:
                df[key] = labels.get(key, "unknown")
        df["run"] = str(run_dir)
        entry.update({k: str(df[k].iloc[0]) for k in LABELS})
        key = (entry["model"], entry["data"])
        mtime = csv.stat().st_mtime
        if key in frames:
            old_mtime, _, old_run = frames[key]
            loser = run_dir if mtime < old_mtime else old_run
            for e in runs_log:
                if e["run"] == str(loser) and e["kind"] == kind:
                    e.update(status="superseded", reason=f"newer run for {key}")
            if mtime < old_mtime:
                entry.update(status="superseded", reason=f"newer run for {key}")
                runs_log.append(entry)
                continue
        frames[key] = (mtime, df, run_dir)
        runs_log.append(entry)
    if not frames:
        return pd.DataFrame()
    return pd.concat([df for _, df, _ in frames.values()], ignore_index=True)


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(text))


def aggregate(root: str | Path, out_dir: str | Path | None = None, n_boot: int = 1000, seed: int = 0) -> dict:
    """Collect every run below ``root`` and write the benchmark tables and plots.

    Returns:
        ``{"n_runs", "models", "anatomies", "files": {name: path}}``.

    Raises:
        FileNotFoundError: ``root`` holds no readable ``metrics/per_case.csv``.
    """
    root = Path(root)
    out = Path(out_dir) if out_dir is not None else root / "aggregate"
    runs_log: list[dict] = []
    df = _collect(root, "metrics", runs_log)
    rob = _collect(root, "robustness", runs_log)
    if df.empty and rob.empty:
        raise FileNotFoundError(
            f"no readable metrics/per_case.csv or robustness/per_case.csv below {root}; "
            "pass the multirun directory of train.py / eval.py runs"
        )
    files: dict[str, str] = {}
    out.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(pd.DataFrame(runs_log), out / "runs.csv")
    files["runs"] = str(out / "runs.csv")
    result = {"n_runs": sum(e["status"] == "used" for e in runs_log), "files": files}
    if not df.empty:
        write_csv_atomic(df, out / "per_case.csv")
        metrics = [m for m in METRIC_KEYS if m in df]
        table = summary_table(df, group_cols=("anatomy", "model"), metrics=metrics, n_boot=n_boot, seed=seed)
        write_csv_atomic(table, out / "benchmark_table.csv")
        md, tex = write_table(table, out / "benchmark_table")
        files.update(benchmark_md=str(md), benchmark_tex=str(tex))
        # spec §8.1: per model, the mean over anatomies of the per-anatomy mean (no CI needed)
        stats = summary_stats(df, group_cols=("anatomy", "model"), metrics=metrics, n_boot=1, seed=seed)
        overall = stats.pivot_table(index="model", columns="metric", values="mean", aggfunc="mean")
        overall = overall.rename(columns={"dice": "dice_x100"}).reset_index()
        if "dice_x100" in overall:
            overall["dice_x100"] *= 100
        overall["n_anatomies"] = overall["model"].map(df.groupby("model")["anatomy"].nunique())
        write_text_atomic(to_markdown(overall.round(2)), out / "overall_table.md")
        files["overall_md"] = str(out / "overall_table.md")
        for anatomy, g in df.groupby("anatomy"):
            path = out / f"boxplot_{_slug(anatomy)}.png"
            files[f"boxplot_{anatomy}"] = str(box_plot(g, metrics, path, by="model", title=str(anatomy)))
        if error_columns(df):
            write_text_atomic(
                to_markdown(clinical_table(df, ("anatomy", "model"))), out / "clinical_table.md"
            )
            files["clinical_md"] = str(out / "clinical_table.md")
            corr_rows = []
            for (anatomy, model), g in df.groupby(["anatomy", "model"]):
                g = g.dropna(axis=1, how="all")
                errs = error_columns(g)
                if not errs:
                    continue
                corr = metric_vs_errors(g, "dice")
                corr_rows.append(corr.assign(anatomy=anatomy, model=model))
                name = f"dice_vs_clinical_{_slug(anatomy)}_{_slug(model)}.png"
                metric_vs_error_scatter(g, errs, out / name, "dice", corr)
                files[name[:-4]] = str(out / name)
            if corr_rows:
                write_csv_atomic(pd.concat(corr_rows, ignore_index=True), out / "dice_vs_clinical.csv")
                files["dice_vs_clinical"] = str(out / "dice_vs_clinical.csv")
        result.update(models=sorted(df["model"].unique()), anatomies=sorted(df["anatomy"].unique()))
    if not rob.empty:
        write_csv_atomic(rob, out / "robustness_per_case.csv")
        rtable = summary_table(rob, group_cols=("anatomy", "model", "angle_deg"), n_boot=n_boot, seed=seed)
        write_text_atomic(to_markdown(rtable), out / "robustness_table.md")
        files["robustness_md"] = str(out / "robustness_table.md")
        for anatomy, g in rob.groupby("anatomy"):
            path = out / f"robustness_{_slug(anatomy)}.png"
            files[f"robustness_{anatomy}"] = str(robustness_curve(g, path, by="model", title=str(anatomy)))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (``xray3d-aggregate``); exit code 1 when nothing could be aggregated."""
    p = argparse.ArgumentParser(prog="xray3d-aggregate", description=__doc__.split("\n")[0])
    p.add_argument("root", type=Path, help="multirun (or any) directory holding evaluated runs")
    p.add_argument("--out", type=Path, default=None, help="output folder (default <root>/aggregate)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the CIs")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        res = aggregate(args.root, args.out, args.n_boot, args.seed)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    table = Path(res["files"].get("benchmark_md", ""))
    if table.is_file():
        print(table.read_text())
    print(f"aggregated {res['n_runs']} runs; files in {Path(res['files']['runs']).parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
