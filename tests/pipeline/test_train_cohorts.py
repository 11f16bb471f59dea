"""The default run's cross-patient test, post-processing chosen on validation and anatomy augmentation,
through ``train.py`` / ``eval.py`` on the real CTs (tiny step counts)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from xray3d.data.embedded import prepare_embedded
from xray3d.evaluation.postprocess import POSTPROCESS_STEPS
from xray3d.pipeline import evaluate, train

from ..conftest import compose_cfg


@pytest.fixture(scope="module")
def two_patients(tmp_path_factory) -> Path:
    """Train T1 T2 | val T5 | test T7 (chest CT) + external L3 (TotalSegmentator example)."""
    out = tmp_path_factory.mktemp("two_patients")
    prepare_embedded(out, include_rib=False, levels=["T1", "T2", "T5", "T7", "L3"])
    return out


def test_within_and_cross_patient_side_by_side_with_the_chosen_postprocessing(tmp_path, two_patients):
    # the default recipe: anatomy augmentation, validation variants, Dice + BCE, weight EMA
    cfg = compose_cfg("train", ["debug=limit"], tmp_path / "run", two_patients)
    assert cfg.data.augment.lowres_prob > 0 and cfg.data.val_variants and cfg.callbacks.ema is not None
    assert cfg.model.get("postprocess", "auto") == "auto" and cfg.data.test_splits == ["test", "external"]
    metrics, _ = train.run(cfg)
    out = Path(cfg.paths.output_dir)
    summary = json.loads((out / "metrics" / "summary.json").read_text())
    assert summary["n_cases"] == 2
    cohorts = summary["cohorts"]
    assert set(cohorts) == {"within-patient", "cross-patient"}
    for c in cohorts.values():
        assert c["n"] == 1 and 0 <= c["dice"] <= 1 and 0 <= c["baseline_dice"] <= 1
        assert isinstance(c["below_baseline"], list)
    per_case = pd.read_csv(out / "metrics" / "per_case.csv").set_index("sample_id")
    assert per_case.loc["tsexample_vert-L3", "cohort"] == "cross-patient"
    assert per_case.loc["chestct_vert-T7", "patient"] == "chestct"
    # the post-processing chosen on validation is stored with the checkpoint and applied at test
    best = metrics["paths"]["best_checkpoint"]
    stored = torch.load(best, map_location="cpu", weights_only=False)["xray3d_postprocess"]
    assert stored in POSTPROCESS_STEPS and summary["postprocess"] == stored
    assert "val/dice_postprocessed" in metrics
    if stored != "none":
        assert "dice_raw" in per_case and summary["metrics_without_postprocess"] is not None
    # eval.py of that checkpoint applies the same choice and gives the same numbers
    eval_cfg = compose_cfg("eval", [f"ckpt_path={best}", "logger=csv"], tmp_path / "eval", two_patients)
    evaluate.run(eval_cfg)
    ev = json.loads((tmp_path / "eval" / "metrics" / "summary.json").read_text())
    assert ev["postprocess"] == stored
    assert ev["cohorts"]["cross-patient"]["dice"] == pytest.approx(cohorts["cross-patient"]["dice"], abs=1e-6)
