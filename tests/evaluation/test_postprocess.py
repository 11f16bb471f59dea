"""Post-processing chosen on validation (xray3d/evaluation/postprocess.py) and its use in the engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xray3d.evaluation.engine import CaseEvaluator
from xray3d.evaluation.postprocess import apply_postprocess, check_postprocess, choose_postprocess


def _ball(s: int = 24, r: float = 7.0) -> np.ndarray:
    z, y, x = np.mgrid[:s, :s, :s]
    return (z - 12) ** 2 + (y - 12) ** 2 + (x - 12) ** 2 <= r**2


def test_largest_component_drops_a_detached_fragment_and_fill_closes_a_cavity():
    gt = _ball()
    pred = gt.copy()
    pred[0:2, 0:2, 0:2] = True  # fragment
    pred[12, 12, 12] = False  # cavity
    lcc = apply_postprocess(pred, "largest_component")
    assert not lcc[0, 0, 0] and not lcc[12, 12, 12]
    filled = apply_postprocess(pred, "largest_component_fill")
    assert np.array_equal(filled, gt)
    assert np.array_equal(apply_postprocess(pred, "none"), pred)
    assert not apply_postprocess(np.zeros((4, 4, 4), bool), "largest_component").any()
    batch = np.stack([pred, gt])[:, None]
    assert apply_postprocess(batch, "largest_component_fill").shape == batch.shape


def test_unknown_name_is_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="largest_component"):
        check_postprocess("biggest")
    assert check_postprocess("auto", allow_auto=True) == "auto"
    with pytest.raises(ValueError):
        check_postprocess("auto")


def test_choice_keeps_none_unless_a_step_improves_validation_dice():
    rows = [{"dice_pp_none": 0.8, "dice_pp_largest_component": 0.8, "dice_pp_largest_component_fill": 0.79}]
    assert choose_postprocess(rows, ["largest_component", "largest_component_fill"]) == "none"
    rows.append(
        {"dice_pp_none": 0.6, "dice_pp_largest_component": 0.7, "dice_pp_largest_component_fill": 0.72}
    )
    assert (
        choose_postprocess(rows, ["largest_component", "largest_component_fill"]) == "largest_component_fill"
    )


def test_engine_scores_candidates_and_reports_dice_with_and_without_the_applied_step():
    gt = _ball()
    pred = gt.copy()
    pred[0:3, 0:3, 0:3] = True
    batch = {
        "mask": torch.from_numpy(gt[None, None].astype(np.float32)),
        "spacing_mm": torch.tensor([1.0]),
        "sample_id": ["a"],
    }
    ev = CaseEvaluator(1.0, score_postprocess=("none", "largest_component"))
    ev.add_batch(torch.from_numpy(pred[None, None]), batch)
    (row,) = ev.finish()
    assert row["dice_pp_none"] < row["dice_pp_largest_component"] == pytest.approx(1.0)
    assert row["dice"] == pytest.approx(row["dice_pp_none"])
    ev = CaseEvaluator(1.0, postprocess="largest_component")
    ev.add_batch(torch.from_numpy(pred[None, None]), batch)
    (row,) = ev.finish()
    assert row["dice"] == pytest.approx(1.0) and row["dice_raw"] < 1.0
