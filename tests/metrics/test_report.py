"""Tests of the aggregation helpers (bootstrap CIs, tables, disaggregation) on hand-computable data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from xray3d.metrics.report import (
    bootstrap_ci,
    describe,
    disaggregate,
    round_like_reference,
    summary_stats,
    summary_table,
    to_latex,
    to_markdown,
)


def test_bootstrap_ci_of_a_constant_is_degenerate():
    assert bootstrap_ci([0.7] * 20) == pytest.approx((0.7, 0.7))


def test_bootstrap_ci_is_seeded_and_reproducible():
    x = np.random.default_rng(1).normal(size=50)
    assert bootstrap_ci(x, seed=3) == bootstrap_ci(x, seed=3)
    assert bootstrap_ci(x, seed=3) != bootstrap_ci(x, seed=4)
    lo, hi = bootstrap_ci(x, n_boot=2000)
    assert lo < x.mean() < hi
    # The CI of the mean is about mean +- 1.96 sd / sqrt(n).
    half = 1.96 * x.std(ddof=1) / math.sqrt(len(x))
    assert hi - lo == pytest.approx(2 * half, rel=0.2)


def test_bootstrap_ci_edge_cases():
    assert all(math.isnan(v) for v in bootstrap_ci([math.inf, math.nan]))
    assert bootstrap_ci([2.0, math.inf]) == (2.0, 2.0)


def test_describe_excludes_and_counts_nonfinite():
    d = describe([1.0, 2.0, 3.0, math.inf, math.nan])
    assert d["n"] == 5 and d["n_nonfinite"] == 2
    assert d["mean"] == 2.0 and d["median"] == 2.0 and d["std"] == pytest.approx(1.0)
    assert 1.0 <= d["ci_lo"] <= 2.0 <= d["ci_hi"] <= 3.0


def test_round_like_reference_changes_the_mean():
    df = pd.DataFrame({"dice": [0.111, 0.116], "hd95_vox": [math.inf, 1.234]})
    r = round_like_reference(df)
    assert r["dice"].tolist() == [0.11, 0.12] and math.isinf(r["hd95_vox"][0]) and r["hd95_vox"][1] == 1.23
    raw = summary_stats(df, group_cols=(), metrics=["dice"])
    rounded = summary_stats(df, group_cols=(), metrics=["dice"], round_like_ref=True)
    assert raw["mean"][0] == pytest.approx(0.1135) and rounded["mean"][0] == pytest.approx(0.115)


@pytest.fixture
def two_models() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "model": ["A", "A", "B", "B"],
            "anatomy": ["vertebra"] * 4,
            "dice": [0.8, 0.9, 0.5, 0.5],
            "hd95_vox": [2.0, 2.0, 4.0, math.inf],
            "nsd": [0.5, 0.5, 0.25, 0.25],
        }
    )


def test_summary_table_paper_format(two_models):
    t = summary_table(two_models, metrics=["dice", "hd95_vox", "nsd"])
    assert list(t.columns) == ["model", "anatomy", "n", "DSC ×100", "HD95 (vox)", "NSD"]
    a, b = t.iloc[0], t.iloc[1]
    assert a["model"] == "A" and a["n"] == 2
    assert a["DSC ×100"].startswith("85.00 [") and a["HD95 (vox)"] == "2.00 [2.00, 2.00]"
    assert b["DSC ×100"] == "50.00 [50.00, 50.00]" and b["NSD"] == "0.25 [0.25, 0.25]"
    assert b["HD95 (vox)"] == "4.00 [4.00, 4.00] (1 non-finite)"
    lo, hi = (float(s) for s in a["DSC ×100"].split("[")[1].rstrip("]").split(", "))
    assert 80.0 <= lo <= 85.0 <= hi <= 90.0


def test_summary_table_ignores_missing_group_columns(two_models):
    t = summary_table(two_models.drop(columns=["model", "anatomy"]), metrics=["nsd"])
    assert list(t.columns) == ["n", "NSD"] and t["n"][0] == 4 and t["NSD"][0].startswith("0.38 [")


def test_markdown_and_latex():
    t = pd.DataFrame({"model": ["two_d"], "n": [3], "DSC ×100": ["85.00 [80.00, 90.00]"]})
    assert to_markdown(t) == "| model | n | DSC ×100 |\n|---|---|---|\n| two_d | 3 | 85.00 [80.00, 90.00] |\n"
    tex = to_latex(t)
    assert tex.startswith("\\begin{tabular}{lll}\n\\toprule\nmodel & n & DSC $\\times$100 \\\\\n\\midrule\n")
    assert "two\\_d & 3 & 85.00 [80.00, 90.00] \\\\" in tex and tex.endswith("\\end{tabular}\n")


@pytest.fixture
def sites() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "site": ["a"] * 3 + ["b"] * 3 + ["c"] * 3,
            "dice": [0.9, 0.9, 0.9, 0.5, 0.5, 0.5, 0.9, 0.9, math.nan],
            "hd95_vox": [1.0, 1.0, 1.0, 5.0, 5.0, 5.0, 1.0, 1.0, math.inf],
        }
    )


def test_disaggregate_flags_the_worse_group(sites):
    d = disaggregate(sites, "site").set_index("site")
    # Aggregate mean over the 8 finite values: (6 * 0.9 + 3 * 0.5 - 0.9) / 8 = 0.75.
    assert d["aggregate_mean"].iloc[0] == pytest.approx(0.75)
    assert d.loc["b", "mean"] == pytest.approx(0.5) and d.loc["b", "ci_hi"] == pytest.approx(0.5)
    assert d["flag"].to_dict() == {"a": False, "b": True, "c": False}
    assert (
        d.loc["c", "n"] == 3 and d.loc["c", "n_nonfinite"] == 1 and d.loc["c", "median"] == pytest.approx(0.9)
    )


def test_disaggregate_threshold_and_lower_is_better(sites):
    assert not disaggregate(sites, "site", threshold=0.3)["flag"].any()  # b is 0.25 below
    assert disaggregate(sites, "site", threshold=0.2)["flag"].tolist() == [False, True, False]
    hd = disaggregate(sites, "site", metric="hd95_vox").set_index("site")
    # HD95: lower is better, so the group with the large distances is flagged.
    assert hd["flag"].to_dict() == {"a": False, "b": True, "c": False}
    assert hd.loc["c", "n_nonfinite"] == 1
    with pytest.raises(KeyError):
        disaggregate(sites, "scanner")
