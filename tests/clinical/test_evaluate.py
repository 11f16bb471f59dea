"""measure_pair: statuses, reasons and errors with a simple known measurement."""

from __future__ import annotations

import numpy as np
import pytest

from xray3d.clinical.base import ClinicalError, clinical_errors, validate_mask, voxel_points_mm
from xray3d.clinical.evaluate import measure_pair


def centroid_measure(mask, affine):
    """A toy measurement: centroid (world mm) and volume (mm^3) of a non-empty mask."""
    m = validate_mask(mask, affine)
    pts = voxel_points_mm(m, affine)
    vol = float(abs(np.linalg.det(affine[:3, :3])))
    return {"centre_xyz_mm": pts.mean(axis=0).tolist(), "volume_mm3": len(pts) * vol, "n": np.int64(3)}


def crashing_measure(mask, affine):
    raise IndexError("boom")


def _cube(shift: int = 0) -> np.ndarray:
    m = np.zeros((20, 20, 20), bool)
    m[5 + shift : 10 + shift, 5:10, 5:10] = True
    return m


AFFINE = np.diag([2.0, 1.0, 1.0, 1.0])


def test_errors_of_a_shifted_prediction():
    row, record = measure_pair(centroid_measure, _cube(), _cube(3), AFFINE)
    assert row["clinical_status"] == "ok" and row["clinical_reason"] == ""
    assert row["centre_err_mm"] == pytest.approx(6.0)  # 3 voxels along an axis of 2 mm
    assert row["volume_err_mm3"] == pytest.approx(0.0)
    assert row["gt_volume_mm3"] == pytest.approx(250.0) and "gt_centre_xyz_mm" not in row
    assert record["pred"]["centre_xyz_mm"][0] == pytest.approx(record["gt"]["centre_xyz_mm"][0] + 6.0)


def test_failed_prediction_and_ground_truth_are_reported_not_raised():
    row, record = measure_pair(centroid_measure, _cube(), np.zeros((20, 20, 20), bool), AFFINE)
    assert row["clinical_status"] == "pred_failed" and "0 foreground voxels" in row["clinical_reason"]
    assert "gt_volume_mm3" in row and not any("_err_" in k for k in row)
    row, _ = measure_pair(centroid_measure, np.zeros((20, 20, 20), bool), _cube(), AFFINE)
    assert row["clinical_status"] == "gt_failed" and row["clinical_reason"].startswith("ground truth:")
    row, _ = measure_pair(crashing_measure, _cube(), _cube(), AFFINE)
    assert row["clinical_status"] == "gt_failed" and "IndexError: boom" in row["clinical_reason"]


def test_validate_mask_rejects_bad_input():
    with pytest.raises(ClinicalError, match="NaN"):
        validate_mask(np.full((4, 4, 4), np.nan), np.eye(4))
    with pytest.raises(ClinicalError, match="3D"):
        validate_mask(np.ones((4, 4)), np.eye(4))
    with pytest.raises(ClinicalError, match="affine"):
        validate_mask(np.ones((4, 4, 4)), np.zeros((4, 4)))
    with pytest.raises(ClinicalError, match="need >= 100"):
        validate_mask(np.ones((4, 4, 4)), np.eye(4), min_voxels=100)


def test_clinical_errors_skip_missing_and_nonfinite():
    gt = {"a_mm": 1.0, "b_deg": 10.0, "p_xyz_mm": [0, 0, 0], "q_xyz_mm": [0, 0, 0], "only_gt_mm": 3.0}
    pred = {"a_mm": 4.0, "b_deg": float("nan"), "p_xyz_mm": [3, 4, 0], "q_xyz_mm": [1, 2]}
    assert clinical_errors(gt, pred) == {"a_err_mm": 3.0, "p_err_mm": 5.0}


def test_unknown_convention_stops_the_evaluation_instead_of_failing_every_case():
    """A configuration error is not a failed measurement: it propagates out of measure_pair."""
    from functools import partial

    from xray3d.clinical.base import ConventionError
    from xray3d.clinical.vertebra import measure

    with pytest.raises(ConventionError, match="valid values: xray3d, reference"):
        measure_pair(partial(measure, convention="mine"), _cube(), _cube(1), AFFINE)
