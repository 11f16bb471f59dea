"""PNG plots of evaluation results (matplotlib, Agg backend): box plots, subgroup bars, metric-vs-error
scatter. Every function writes the figure atomically and returns its path."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from xray3d.data.io import write_bytes_atomic  # noqa: E402
from xray3d.metrics.report import DISPLAY_NAMES, DISPLAY_SCALE  # noqa: E402

__all__ = ["box_plot", "subgroup_bars", "metric_vs_error_scatter", "robustness_curve"]


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, dpi=110, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)
    write_bytes_atomic(buf.getvalue(), path)
    return path


def _finite(series: pd.Series) -> np.ndarray:
    vals = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
    return vals[np.isfinite(vals)]


def box_plot(
    df: pd.DataFrame, metrics: Sequence[str], path: str | Path, by: str | None = None, title: str = ""
) -> Path:
    """One panel per metric, one box per value of ``by`` (all cases in one box without it).

    Non-finite values (empty predictions) are left out; the count is in the tick label.
    """
    metrics = [m for m in metrics if m in df]
    if not metrics:
        raise ValueError(f"box_plot: none of the metrics are columns of the table ({list(df.columns)})")
    groups = [(str(k), g) for k, g in df.groupby(by, sort=True)] if by and by in df else [("all", df)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(3.2, 0.9 * len(groups) + 1.5) * len(metrics), 3.6))
    axes = np.atleast_1d(axes)
    for ax, metric in zip(axes, metrics, strict=True):
        scale = DISPLAY_SCALE.get(metric, 1.0)
        data, labels = [], []
        for name, g in groups:
            vals = _finite(g[metric]) * scale
            n_bad = len(g) - len(vals)
            data.append(vals if len(vals) else np.array([np.nan]))
            labels.append(f"{name}\n(n={len(vals)}{f', {n_bad} non-finite' if n_bad else ''})")
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(labels) + 1), labels, rotation=30 if len(labels) > 3 else 0, fontsize=8)
        ax.set_title(DISPLAY_NAMES.get(metric, metric))
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def subgroup_bars(table: pd.DataFrame, by: str, metric: str, path: str | Path, title: str = "") -> Path:
    """Bars of the per-group mean with its CI (a :func:`~xray3d.metrics.report.disaggregate` table).

    Flagged groups (worse than the aggregate) are red; the dashed line is the aggregate mean.
    """
    scale = DISPLAY_SCALE.get(metric, 1.0)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(table) + 2), 3.6))
    x = np.arange(len(table))
    mean = table["mean"].to_numpy(dtype=float) * scale
    lo = np.clip(mean - table["ci_lo"].to_numpy(dtype=float) * scale, 0, None)
    hi = np.clip(table["ci_hi"].to_numpy(dtype=float) * scale - mean, 0, None)
    colors = ["tab:red" if f else "tab:blue" for f in table["flag"]]
    ax.bar(x, np.nan_to_num(mean), yerr=np.nan_to_num(np.vstack([lo, hi])), color=colors, capsize=3)
    agg = float(table["aggregate_mean"].iloc[0]) * scale if len(table) else math.nan
    if math.isfinite(agg):
        ax.axhline(agg, color="k", ls="--", lw=1, label=f"all cases {agg:.2f}")
        ax.legend(fontsize=8)
    ax.set_xticks(x, [f"{v}\n(n={n})" for v, n in zip(table[by], table["n"], strict=True)], fontsize=8)
    ax.set_ylabel(DISPLAY_NAMES.get(metric, metric))
    ax.set_title(title or f"{DISPLAY_NAMES.get(metric, metric)} by {by} (red: below the aggregate)")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def metric_vs_error_scatter(
    df: pd.DataFrame,
    errors: Sequence[str],
    path: str | Path,
    metric: str = "dice",
    corr: pd.DataFrame | None = None,
) -> Path:
    """Scatter of ``metric`` against each clinical error (one panel per error, Spearman rho in the title)."""
    errors = [e for e in errors if e in df]
    if not errors or metric not in df:
        raise ValueError(f"metric_vs_error_scatter: need {metric!r} and at least one error column")
    ncol = min(4, len(errors))
    nrow = math.ceil(len(errors) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.3 * ncol, 3.0 * nrow), squeeze=False)
    rho = (
        dict(zip(corr["error"], corr["spearman_rho"], strict=True)) if corr is not None and len(corr) else {}
    )
    scale = DISPLAY_SCALE.get(metric, 1.0)
    for ax, err in zip(axes.ravel(), errors, strict=False):
        pair = (
            df[[metric, err]]
            .apply(pd.to_numeric, errors="coerce")
            .replace([np.inf, -np.inf], np.nan)
            .dropna()
        )
        ax.scatter(pair[metric] * scale, pair[err], s=12, alpha=0.7)
        r = rho.get(err, math.nan)
        ax.set_title(
            f"{err}\nrho={r:.2f} n={len(pair)}" if math.isfinite(r) else f"{err}\nn={len(pair)}", fontsize=8
        )
        ax.set_xlabel(DISPLAY_NAMES.get(metric, metric), fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(errors) :]:
        ax.axis("off")
    fig.suptitle(f"{DISPLAY_NAMES.get(metric, metric)} vs clinical errors")
    fig.tight_layout()
    return _save(fig, path)


def robustness_curve(
    df: pd.DataFrame,
    path: str | Path,
    by: str | None = None,
    metrics: Sequence[str] = ("dice", "hd95_mm"),
    xlabel: str = "rotation (deg)",
    title: str = "",
    seed: int = 0,
) -> Path:
    """Mean metric (95 % bootstrap CI band) against ``angle_deg``, one line per value of ``by``."""
    from xray3d.metrics.report import summary_stats

    metrics = [m for m in metrics if m in df]
    if "angle_deg" not in df or not metrics:
        raise ValueError("robustness_curve needs an angle_deg column and at least one metric column")
    groups = [(str(k), g) for k, g in df.groupby(by, sort=True)] if by and by in df else [("", df)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.2))
    axes = np.atleast_1d(axes)
    for name, g in groups:
        stats = summary_stats(g, group_cols=("angle_deg",), metrics=metrics, seed=seed)
        for axis, metric in zip(axes, metrics, strict=True):
            s = stats[stats.metric == metric].sort_values("angle_deg")
            scale = DISPLAY_SCALE.get(metric, 1.0)
            axis.plot(s["angle_deg"], s["mean"] * scale, marker="o", label=name or None)
            axis.fill_between(s["angle_deg"], s["ci_lo"] * scale, s["ci_hi"] * scale, alpha=0.2)
            axis.set_xlabel(xlabel)
            axis.set_ylabel(DISPLAY_NAMES.get(metric, metric))
            axis.grid(alpha=0.3)
    if len(groups) > 1:
        axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
