"""Aggregate per-case metrics: bootstrap confidence intervals, paper-style tables, disaggregation.

Conventions:

* Non-finite values (``inf`` from an empty prediction, NaN from an empty ground truth) are excluded from
  every mean, median and CI, and counted in ``n_nonfinite`` (the reference replaces ±inf by NaN and skips
  them).
* CIs are percentile bootstrap intervals of the mean (resampling cases with replacement, seeded
  :class:`numpy.random.Generator`, ``n_boot`` resamples).
* ``round_like_reference=True`` rounds every per-case value to 2 decimals before aggregating, as the
  reference benchmark does when it writes ``metric-log.csv``.
* Tables follow the paper (benchmark spec §8.2): Dice ×100, HD95/ASD/NSD as they are, 2 decimals,
  cells ``"mean [lo, hi]"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from xray3d.data.io import write_text_atomic

__all__ = [
    "bootstrap_ci",
    "describe",
    "round_like_reference",
    "summary_stats",
    "summary_table",
    "to_markdown",
    "to_latex",
    "write_table",
    "disaggregate",
    "error_columns",
    "clinical_summary",
    "clinical_table",
    "metric_vs_errors",
    "DISPLAY_NAMES",
    "DISPLAY_SCALE",
]

DEFAULT_METRICS = ("dice", "hd95_mm", "asd_mm", "nsd", "hd95_vox", "asd_vox")
DISPLAY_NAMES = {
    "dice": "DSC ×100",
    "hd95_mm": "HD95 (mm)",
    "asd_mm": "ASD (mm)",
    "hd95_vox": "HD95 (vox)",
    "asd_vox": "ASD (vox)",
    "nsd": "NSD",
}
DISPLAY_SCALE = {"dice": 100.0}
LOWER_IS_BETTER = ("hd95_mm", "asd_mm", "hd95_vox", "asd_vox")


def _finite(values: Sequence[float] | np.ndarray | pd.Series) -> np.ndarray:
    vals = np.asarray(values, dtype=float)
    return vals[np.isfinite(vals)]


def bootstrap_ci(
    values: Sequence[float] | np.ndarray | pd.Series,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int | np.random.Generator | None = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the mean of the finite values.

    Args:
        values: per-case values; non-finite ones are dropped first.
        n_boot: number of resamples (with replacement, same size as the data).
        level: coverage of the interval (0.95 -> 2.5th and 97.5th percentiles of the resampled means).
        seed: seed or Generator (``numpy.random.default_rng``); the same seed gives the same interval.

    Returns:
        ``(lo, hi)``; ``(nan, nan)`` without finite values, ``(x, x)`` for a single one.
    """
    x = _finite(values)
    if len(x) == 0:
        return math.nan, math.nan
    if len(x) == 1:
        return float(x[0]), float(x[0])
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def describe(
    values: Sequence[float] | np.ndarray | pd.Series,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int | np.random.Generator | None = 0,
) -> dict[str, float | int]:
    """``n``, ``n_nonfinite`` and, over the finite values, ``mean``, ``std`` (ddof=1), ``median``, CI."""
    vals = np.asarray(values, dtype=float)
    x = _finite(vals)
    lo, hi = bootstrap_ci(x, n_boot=n_boot, level=level, seed=seed)
    return {
        "n": int(len(vals)),
        "n_nonfinite": int(len(vals) - len(x)),
        "mean": float(x.mean()) if len(x) else math.nan,
        "std": float(x.std(ddof=1)) if len(x) > 1 else math.nan,
        "median": float(np.median(x)) if len(x) else math.nan,
        "ci_lo": lo,
        "ci_hi": hi,
    }


def round_like_reference(df: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """A copy of ``df`` with the metric columns rounded to 2 decimals (inf stays inf), like the reference."""
    out = df.copy()
    for m in metrics or DEFAULT_METRICS:
        if m in out:
            out[m] = out[m].astype(float).round(2)
    return out


def _groups(
    df: pd.DataFrame, group_cols: Sequence[str]
) -> tuple[list[str], list[tuple[tuple, pd.DataFrame]]]:
    cols = [c for c in group_cols if c in df]
    if not cols:
        return [], [((), df)]
    return cols, [((k if isinstance(k, tuple) else (k,)), g) for k, g in df.groupby(cols, sort=True)]


def summary_stats(
    df: pd.DataFrame,
    group_cols: Sequence[str] = ("model", "anatomy"),
    metrics: Sequence[str] | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    round_like_ref: bool = False,
) -> pd.DataFrame:
    """Long numeric table: one row per (group, metric) with :func:`describe`'s columns.

    Group columns absent from ``df`` are ignored (no group column -> one group). Each (group, metric) uses
    a Generator seeded with ``seed``, so results do not depend on the order of groups or metrics.
    """
    if round_like_ref:
        df = round_like_reference(df, metrics)
    metrics = [m for m in (metrics or DEFAULT_METRICS) if m in df]
    cols, groups = _groups(df, group_cols)
    rows = []
    for key, g in groups:
        for m in metrics:
            stats = describe(g[m], n_boot=n_boot, level=level, seed=seed)
            rows.append({**dict(zip(cols, key, strict=True)), "metric": m, **stats})
    return pd.DataFrame(rows)


def _fmt(x: float, scale: float = 1.0) -> str:
    return "nan" if not math.isfinite(x) else f"{x * scale:.2f}"


def summary_table(
    df: pd.DataFrame,
    group_cols: Sequence[str] = ("model", "anatomy"),
    metrics: Sequence[str] | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    round_like_reference: bool = False,
) -> pd.DataFrame:
    """Per-group ``"mean [lo, hi]"`` strings in the paper's format (Dice ×100, others as is, 2 decimals).

    Args:
        df: per-case rows with metric columns and (optionally) the group columns.
        group_cols: grouping columns; those absent from ``df`` are ignored.
        metrics: metric columns (default: those of :data:`DEFAULT_METRICS` present in ``df``).
        n_boot, level, seed: bootstrap settings (:func:`bootstrap_ci`).
        round_like_reference: round per-case values to 2 decimals before aggregating.

    Returns:
        One row per group: the group columns, ``n`` (cases) and one column per metric named by
        :data:`DISPLAY_NAMES`; a metric with non-finite cases gets a ``" (k non-finite)"`` note.
    """
    stats = summary_stats(df, group_cols, metrics, n_boot, level, seed, round_like_reference)
    cols = [c for c in group_cols if c in df]
    rows: list[dict] = []
    if stats.empty:
        return pd.DataFrame(columns=[*cols, "n"])
    for key, g in stats.groupby(cols, sort=True) if cols else [((), stats)]:
        key = key if isinstance(key, tuple) else (key,)
        row: dict = {**dict(zip(cols, key, strict=True)), "n": int(g["n"].iloc[0])}
        for _, s in g.iterrows():
            scale = DISPLAY_SCALE.get(s["metric"], 1.0)
            cell = f"{_fmt(s['mean'], scale)} [{_fmt(s['ci_lo'], scale)}, {_fmt(s['ci_hi'], scale)}]"
            if s["n_nonfinite"]:
                cell += f" ({int(s['n_nonfinite'])} non-finite)"
            row[DISPLAY_NAMES.get(s["metric"], s["metric"])] = cell
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub pipe table of ``table`` (all cells as strings), ending with a newline."""
    header = [str(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines) + "\n"


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_"}
_LATEX_ESCAPES.update({"{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"})


def _latex_escape(text: str) -> str:
    out = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))
    return out.replace("×", r"$\times$")


def to_latex(table: pd.DataFrame) -> str:
    """A ``booktabs`` tabular of ``table`` (left-aligned text columns), ending with a newline."""
    header = " & ".join(_latex_escape(c) for c in table.columns) + r" \\"
    body = [" & ".join(_latex_escape(v) for v in row) + r" \\" for row in table.itertuples(index=False)]
    spec = "l" * len(table.columns)
    return (
        "\n".join(
            [
                rf"\begin{{tabular}}{{{spec}}}",
                r"\toprule",
                header,
                r"\midrule",
                *body,
                r"\bottomrule",
                r"\end{tabular}",
            ]
        )
        + "\n"
    )


def write_table(table: pd.DataFrame, stem: str | Path) -> tuple[Path, Path]:
    """Write ``table`` as ``<stem>.md`` and ``<stem>.tex`` (markdown and LaTeX), atomically."""
    stem = Path(stem)
    md, tex = stem.with_suffix(".md"), stem.with_suffix(".tex")
    write_text_atomic(to_markdown(table), md)
    write_text_atomic(to_latex(table), tex)
    return md, tex


def disaggregate(
    df: pd.DataFrame,
    by: str,
    metric: str = "dice",
    threshold: float | None = None,
    higher_is_better: bool | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    min_n: int = 3,
) -> pd.DataFrame:
    """Per-group n, n_nonfinite, mean, median and CI of ``metric``, flagging groups worse than the aggregate.

    The aggregate mean is over all finite values of ``df[metric]``. A group is flagged when it is worse than
    the aggregate: with ``threshold=None`` when its whole CI lies on the worse side (for a higher-is-better
    metric: ``ci_hi < aggregate_mean``); with a threshold when its mean is worse by more than ``threshold``
    (``aggregate_mean - mean > threshold``). ``higher_is_better`` defaults to False for HD95/ASD, True
    otherwise (for lower-is-better metrics the comparisons are mirrored). With the CI rule a group needs at
    least ``min_n`` finite values to be flagged (the bootstrap CI of one or two cases means nothing).

    Returns:
        Columns ``[by, "n", "n_nonfinite", "mean", "median", "ci_lo", "ci_hi", "aggregate_mean", "flag"]``.
    """
    if by not in df or metric not in df:
        raise KeyError(f"disaggregate needs columns {by!r} and {metric!r}; got {list(df.columns)}")
    if higher_is_better is None:
        higher_is_better = metric not in LOWER_IS_BETTER
    finite_all = _finite(df[metric])
    agg = float(finite_all.mean()) if len(finite_all) else math.nan
    rows = []
    for key, g in df.groupby(by, sort=True):
        s = describe(g[metric], n_boot=n_boot, level=level, seed=seed)
        if threshold is None:
            enough = s["n"] - s["n_nonfinite"] >= min_n
            flag = enough and (s["ci_hi"] < agg if higher_is_better else s["ci_lo"] > agg)
        else:
            gap = agg - s["mean"] if higher_is_better else s["mean"] - agg
            flag = gap > threshold
        rows.append(
            {
                by: key,
                "n": s["n"],
                "n_nonfinite": s["n_nonfinite"],
                "mean": s["mean"],
                "median": s["median"],
                "ci_lo": s["ci_lo"],
                "ci_hi": s["ci_hi"],
                "aggregate_mean": agg,
                "flag": bool(flag),
            }
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- clinical parameters
def error_columns(df: pd.DataFrame) -> list[str]:
    """The clinical-error columns of per-case rows (``<name>_err_mm`` / ``_err_deg`` / ...), sorted."""
    return sorted(c for c in df.columns if "_err_" in c and pd.api.types.is_numeric_dtype(df[c]))


def clinical_summary(df: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict:
    """Per clinical error: median (the reference's statistic), mean, IQR, CI of the mean, n; failures.

    Returns:
        ``{"errors": {col: {...}}, "n_cases", "n_measured", "n_gt_failed", "n_pred_failed", "failures":
        [{"sample_id", "status", "reason"}]}``; empty dict when ``df`` has no ``clinical_status``.
    """
    if "clinical_status" not in df:
        return {}
    status = df["clinical_status"].fillna("")
    errors = {}
    for col in error_columns(df):
        vals = _finite(df[col])
        stats = describe(df[col], n_boot=n_boot, seed=seed)  # n counts every case, NaN = not measured
        stats["q25"] = float(np.percentile(vals, 25)) if len(vals) else math.nan
        stats["q75"] = float(np.percentile(vals, 75)) if len(vals) else math.nan
        errors[col] = stats
    id_col = "sample_id" if "sample_id" in df else "case" if "case" in df else None
    failed = df[status != "ok"]
    return {
        "errors": errors,
        "n_cases": int(len(df)),
        "n_measured": int((status == "ok").sum()),
        "n_gt_failed": int((status == "gt_failed").sum()),
        "n_pred_failed": int((status == "pred_failed").sum()),
        "failures": [
            {
                "case": str(r[id_col]) if id_col else "",
                "status": str(r["clinical_status"]),
                "reason": str(r.get("clinical_reason", "")),
            }
            for _, r in failed.iterrows()
        ],
    }


def metric_vs_errors(df: pd.DataFrame, metric: str = "dice", min_n: int = 3) -> pd.DataFrame:
    """Correlation between an image metric and every clinical error over the cases measured on both.

    Spearman's rho (rank, robust to outliers) and Pearson's r with two-sided p-values
    (:mod:`scipy.stats`); a good image metric should correlate negatively with clinical errors
    (higher Dice, smaller error). Errors with fewer than ``min_n`` paired cases or a constant column
    get NaN statistics and their ``n``.

    Returns:
        Columns ``["metric", "error", "n", "spearman_rho", "spearman_p", "pearson_r", "pearson_p"]``.
    """
    from scipy import stats

    rows = []
    if metric not in df:
        return pd.DataFrame(
            columns=["metric", "error", "n", "spearman_rho", "spearman_p", "pearson_r", "pearson_p"]
        )
    for col in error_columns(df):
        pair = df[[metric, col]].astype(float).replace([np.inf, -np.inf], np.nan).dropna()
        row = {"metric": metric, "error": col, "n": int(len(pair))}
        x, y = pair[metric].to_numpy(), pair[col].to_numpy()
        if len(pair) >= min_n and np.ptp(x) > 0 and np.ptp(y) > 0:
            rho, p_s = stats.spearmanr(x, y)
            r, p_p = stats.pearsonr(x, y)
            row.update(
                spearman_rho=float(rho), spearman_p=float(p_s), pearson_r=float(r), pearson_p=float(p_p)
            )
        else:
            row.update(spearman_rho=math.nan, spearman_p=math.nan, pearson_r=math.nan, pearson_p=math.nan)
        rows.append(row)
    return pd.DataFrame(
        rows, columns=["metric", "error", "n", "spearman_rho", "spearman_p", "pearson_r", "pearson_p"]
    )


def clinical_table(df: pd.DataFrame, group_cols: Sequence[str] = ("model", "anatomy")) -> pd.DataFrame:
    """Median absolute clinical error per group and parameter (spec §8.6 format), with n measured.

    Returns:
        One row per group: the group columns, then one ``"<median> (n=<k>)"`` cell per error column
        (empty when the group has no value for it).
    """
    cols = [c for c in group_cols if c in df]
    errs = error_columns(df)
    rows = []
    for key, g in df.groupby(cols, sort=True) if cols else [((), df)]:
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(cols, key, strict=True))
        for col in errs:
            vals = _finite(g[col])
            row[col] = f"{np.median(vals):.2f} (n={len(vals)})" if len(vals) else ""
        rows.append(row)
    return pd.DataFrame(rows)
