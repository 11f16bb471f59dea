"""Everything an evaluation writes next to ``per_case.csv``: paper-style tables with bootstrap CIs,
disaggregated (subgroup) tables and bars, clinical-error medians, Dice-vs-clinical correlations and plots.

Used by the test-time :class:`~xray3d.callbacks.metrics_report.MetricsReport`, ``xray3d-score`` and the
domain-shift command, so a run, a folder of external predictions and a cross-dataset evaluation produce
the same files:

=====================  ===================================================================
``table.md/.tex``      mean [95 % CI] per metric (Dice ×100), one row (per label group)
``subgroups.csv/.md``  per metadata column and group: n, mean, median, CI, ``flag`` (CI below the
                       aggregate for Dice/NSD, above it for distances)
``subgroups_<col>.png`` Dice by group, flagged groups in red
``boxplot.png``        per-case distribution of every image metric
``clinical.md``        median absolute clinical error per parameter (spec §8.6 format)
``dice_vs_clinical.*`` Spearman / Pearson correlation of Dice with every clinical error + scatter
=====================  ===================================================================
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from xray3d.data.io import write_csv_atomic, write_text_atomic
from xray3d.metrics.image import METRIC_KEYS
from xray3d.metrics.plots import box_plot, metric_vs_error_scatter, subgroup_bars
from xray3d.metrics.report import (
    clinical_summary,
    clinical_table,
    disaggregate,
    error_columns,
    metric_vs_errors,
    summary_table,
    to_markdown,
    write_table,
)

__all__ = ["write_evaluation_report", "SUBGROUP_METRICS"]

log = logging.getLogger(__name__)

#: metrics disaggregated per subgroup
SUBGROUP_METRICS = ("dice", "hd95_mm", "nsd")


def _groupable(df: pd.DataFrame, col: str) -> bool:
    return col in df and df[col].notna().any() and df[col].astype(str).nunique() >= 2


def write_evaluation_report(
    df: pd.DataFrame,
    out_dir: str | Path,
    group_by: Sequence[str] = (),
    labels: Mapping[str, str] | None = None,
    metrics: Sequence[str] = METRIC_KEYS,
    n_boot: int = 1000,
    seed: int = 0,
    plots: bool = True,
    tables: bool = True,
) -> dict:
    """Write tables and plots of per-case rows into ``out_dir``; return what was computed.

    Args:
        df: per-case rows (image metrics, optional clinical columns, sample metadata).
        out_dir: output folder (created).
        group_by: metadata columns to disaggregate by; those missing or with a single value are skipped.
        labels: constant columns added to the table rows (e.g. ``{"model": "unet", "anatomy": "hip"}``).
        metrics: image-metric columns.
        n_boot, seed: bootstrap settings of the CIs.
        plots: write PNGs (off for speed in tight loops).
        tables: write ``table.md/.tex`` (off when the caller writes its own, e.g. rounded ones).

    Returns:
        ``{"paths": {name: path}, "subgroups": [...rows], "clinical": clinical_summary(...),
        "dice_vs_clinical": [...rows]}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = dict(labels or {})
    df = df.copy()
    for key, value in labels.items():
        df[key] = value
    metrics = [m for m in metrics if m in df]
    paths: dict[str, str] = {}
    result: dict = {"paths": paths, "subgroups": [], "clinical": {}, "dice_vs_clinical": []}
    if df.empty or not metrics:
        return result

    if tables:
        table = summary_table(df, group_cols=tuple(labels), metrics=metrics, n_boot=n_boot, seed=seed)
        md, tex = write_table(table, out / "table")
        paths.update(table_md=str(md), table_tex=str(tex))

    sub_rows = []
    for col in group_by:
        if not _groupable(df, col):
            continue
        keyed = df.assign(**{col: df[col].astype(str)})
        for metric in (m for m in SUBGROUP_METRICS if m in metrics):
            dis = disaggregate(keyed, col, metric, n_boot=n_boot, seed=seed)
            sub_rows += [
                {"group_by": col, "metric": metric, "group": r.pop(col), **r} for r in dis.to_dict("records")
            ]
            if plots and metric == "dice":
                paths[f"subgroups_{col}_png"] = str(
                    subgroup_bars(dis, col, metric, out / f"subgroups_{col}.png")
                )
    if sub_rows:
        sub = pd.DataFrame(sub_rows)
        write_csv_atomic(sub, out / "subgroups.csv")
        write_text_atomic(to_markdown(sub.round(4)), out / "subgroups.md")
        paths.update(subgroups_csv=str(out / "subgroups.csv"), subgroups_md=str(out / "subgroups.md"))
        result["subgroups"] = sub_rows
        for r in sub_rows:
            if r["flag"]:
                log.warning(
                    "subgroup %s=%s: %s mean %.3f vs %.3f over all cases (n=%d)",
                    r["group_by"], r["group"], r["metric"], r["mean"], r["aggregate_mean"], r["n"],
                )  # fmt: skip

    if plots:
        paths["boxplot_png"] = str(
            box_plot(df, metrics, out / "boxplot.png", title=" ".join(labels.values()))
        )

    errs = error_columns(df)
    if "clinical_status" in df:
        result["clinical"] = clinical_summary(df, n_boot=n_boot, seed=seed)
    if errs:
        write_text_atomic(to_markdown(clinical_table(df, tuple(labels))), out / "clinical.md")
        paths["clinical_md"] = str(out / "clinical.md")
        corr = metric_vs_errors(df, "dice")
        write_csv_atomic(corr, out / "dice_vs_clinical.csv")
        paths["dice_vs_clinical_csv"] = str(out / "dice_vs_clinical.csv")
        result["dice_vs_clinical"] = corr.to_dict("records")
        if plots:
            paths["dice_vs_clinical_png"] = str(
                metric_vs_error_scatter(df, errs, out / "dice_vs_clinical.png", "dice", corr)
            )
    return result
