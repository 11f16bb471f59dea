"""Evaluation report: subgroup flags, clinical medians, Dice-vs-clinical correlation, files and plots."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from xray3d.metrics.evaluation_report import write_evaluation_report
from xray3d.metrics.report import clinical_summary, clinical_table, error_columns, metric_vs_errors


def _cases(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    dice = rng.uniform(0.6, 0.95, n)
    group = np.where(np.arange(n) < n // 4, "fractured", "healthy")
    dice[group == "fractured"] -= 0.3  # a subgroup far below the aggregate
    err = (1 - dice) * 20 + rng.normal(0, 0.2, n)  # clinical error shrinks as Dice grows
    status = np.array(["ok"] * n, dtype=object)
    status[0] = "pred_failed"
    df = pd.DataFrame(
        {
            "sample_id": [f"c{i}" for i in range(n)],
            "dice": dice,
            "hd95_mm": (1 - dice) * 30,
            "asd_mm": (1 - dice) * 5,
            "nsd": dice,
            "grade": group,
            "side": "left",
            "clinical_status": status,
            "clinical_reason": ["prediction: empty"] + [""] * (n - 1),
            "head_radius_err_mm": err,
            "neck_shaft_angle_err_deg": np.abs(rng.normal(0, 2, n)),
        }
    )
    df.loc[0, ["head_radius_err_mm", "neck_shaft_angle_err_deg"]] = np.nan
    return df


def test_error_columns_and_clinical_summary():
    df = _cases()
    assert error_columns(df) == ["head_radius_err_mm", "neck_shaft_angle_err_deg"]
    s = clinical_summary(df)
    assert s["n_cases"] == 40 and s["n_measured"] == 39 and s["n_pred_failed"] == 1
    assert s["failures"] == [{"case": "c0", "status": "pred_failed", "reason": "prediction: empty"}]
    e = s["errors"]["head_radius_err_mm"]
    assert e["n"] == 40 and e["n_nonfinite"] == 1
    assert e["median"] == pytest.approx(np.nanmedian(df["head_radius_err_mm"]))
    assert e["q25"] <= e["median"] <= e["q75"]


def test_metric_vs_errors_finds_the_built_in_negative_correlation():
    corr = metric_vs_errors(_cases()).set_index("error")
    assert corr.loc["head_radius_err_mm", "spearman_rho"] < -0.9
    assert corr.loc["head_radius_err_mm", "spearman_p"] < 1e-6
    assert abs(corr.loc["neck_shaft_angle_err_deg", "spearman_rho"]) < 0.5
    assert corr.loc["head_radius_err_mm", "n"] == 39
    tiny = metric_vs_errors(_cases().head(3))  # 2 paired cases: no statistic, no crash
    assert tiny["spearman_rho"].isna().all()


def test_clinical_table_reports_medians_per_group():
    df = _cases().assign(model=lambda d: np.where(d.index % 2 == 0, "unet", "swin"))
    t = clinical_table(df, ("model",)).set_index("model")
    med = np.nanmedian(df[df.model == "unet"]["head_radius_err_mm"])
    assert t.loc["unet", "head_radius_err_mm"].startswith(f"{med:.2f} (n=")


def test_write_evaluation_report_files_and_flags(tmp_path):
    res = write_evaluation_report(
        _cases(), tmp_path, group_by=["grade", "side", "absent"], labels={"model": "m"}
    )
    names = {p.name for p in tmp_path.iterdir()}
    assert {
        "table.md",
        "table.tex",
        "subgroups.csv",
        "subgroups.md",
        "subgroups_grade.png",
        "boxplot.png",
    } <= names
    assert {"clinical.md", "dice_vs_clinical.csv", "dice_vs_clinical.png"} <= names
    assert "subgroups_side.png" not in names  # a single group is not disaggregated
    sub = pd.read_csv(tmp_path / "subgroups.csv")
    dice = sub[(sub.metric == "dice")].set_index("group")
    assert bool(dice.loc["fractured", "flag"]) and not bool(dice.loc["healthy", "flag"])
    assert dice.loc["fractured", "n"] == 10
    # HD95 is lower-is-better: the fractured group is flagged as well (its CI lies above the aggregate)
    assert bool(sub[(sub.metric == "hd95_mm") & (sub.group == "fractured")]["flag"].iloc[0])
    assert "| m | 40 |" in (tmp_path / "table.md").read_text()
    assert res["clinical"]["n_pred_failed"] == 1
    for png in tmp_path.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_without_clinical_columns_or_groups(tmp_path):
    df = _cases()[["sample_id", "dice", "hd95_mm", "asd_mm", "nsd"]]
    res = write_evaluation_report(df, tmp_path, plots=False)
    assert res["clinical"] == {} and res["subgroups"] == [] and res["dice_vs_clinical"] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.md", "table.tex"]


def test_a_single_case_group_is_not_flagged_by_its_degenerate_ci():
    from xray3d.metrics.report import disaggregate

    df = pd.DataFrame({"level": ["T1", "T2", "T3"] * 3 + ["T4"], "dice": [0.9, 0.85, 0.88] * 3 + [0.2]})
    d = disaggregate(df, "level").set_index("level")
    assert not d.loc["T4", "flag"] and d.loc["T4", "ci_lo"] == d.loc["T4", "ci_hi"] == pytest.approx(0.2)
    assert disaggregate(df, "level", min_n=1).set_index("level").loc["T4", "flag"]
