"""Clinical parameters of one evaluated case: measure ground truth and prediction, compare them."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from xray3d.clinical.base import ClinicalError, ConventionError, clinical_errors

__all__ = ["CLINICAL_STATUS", "ClinicalMeasure", "measure_pair", "scalar_columns"]

log = logging.getLogger(__name__)

#: ``clinical_status`` values of a per-case row.
CLINICAL_STATUS = ("ok", "gt_failed", "pred_failed")

Measure = Callable[..., dict[str, Any]]


class ClinicalMeasure:
    """A measurement with an alignment step for predictions (``conf/clinical/rib.yaml``).

    Calling it measures like ``measure``; :func:`measure_pair` also calls ``align(gt, pred)`` on the two
    measurements before comparing them (e.g. ribs are matched by position, not by their ordinal name).

    Args:
        measure: ``measure(mask, affine) -> dict``.
        align: ``align(reference, other) -> other`` with keys renamed to the reference's, or None.
    """

    def __init__(self, measure: Measure, align: Callable[[dict, dict], dict] | None = None) -> None:
        self.measure = measure
        self.align = align

    def __call__(self, mask: np.ndarray, affine: np.ndarray) -> dict[str, Any]:
        return self.measure(mask, affine)


def scalar_columns(measurement: dict[str, Any], prefix: str) -> dict[str, float]:
    """The finite scalar parameters of a measurement as ``<prefix><key>`` columns (points are left out)."""
    out = {}
    for key, value in measurement.items():
        if isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(float(value)):
            out[f"{prefix}{key}"] = float(value)
    return out


def _measure(measure: Measure, mask: np.ndarray, affine: np.ndarray) -> dict[str, Any]:
    try:
        return measure(mask, affine)
    except (ClinicalError, ConventionError):  # a configuration error stops the evaluation
        raise
    except Exception as exc:  # an algorithm bug on an odd shape must not stop an evaluation
        log.exception("clinical measurement crashed")
        raise ClinicalError(f"measurement crashed ({type(exc).__name__}: {exc})") from exc


def measure_pair(
    measure: Measure,
    gt: np.ndarray,
    pred: np.ndarray,
    affine: np.ndarray,
    gt_measure: Measure | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Measure the clinical parameters on a ground-truth and a predicted mask of one case.

    Args:
        measure: ``measure(mask, affine) -> dict`` of an anatomy (``conf/clinical/<anatomy>.yaml``).
        gt: ground-truth binary mask.
        pred: predicted binary mask on the same grid.
        affine: voxel-to-world matrix (mm) of that grid.
        gt_measure: measurement used for the ground truth (e.g. a
            :class:`~xray3d.clinical.cache.MeasurementCache` of ``measure``); default ``measure``.

    Returns:
        ``(row, record)``: ``row`` holds ``clinical_status`` (:data:`CLINICAL_STATUS`), ``clinical_reason``,
        the scalar parameters as ``gt_<key>`` / ``pred_<key>`` and the errors ``<name>_err_<unit>``
        (absolute differences; Euclidean distances for points); ``record`` holds the complete
        measurements (points included) for ``clinical.jsonl``. A mask that cannot be measured gives a
        failed status with the reason, never an exception or a NaN.
    """
    affine = np.asarray(affine, dtype=float)
    record: dict[str, Any] = {"gt": None, "pred": None, "errors": {}}
    try:
        gt_m = _measure(gt_measure or measure, gt, affine)
    except ClinicalError as exc:
        row = {"clinical_status": "gt_failed", "clinical_reason": f"ground truth: {exc}"}
        return row, {**record, **row}
    record["gt"] = gt_m
    row: dict[str, Any] = {"clinical_status": "ok", "clinical_reason": "", **scalar_columns(gt_m, "gt_")}
    try:
        pred_m = _measure(measure, pred, affine)
    except ClinicalError as exc:
        row.update(clinical_status="pred_failed", clinical_reason=f"prediction: {exc}")
        return row, {**record, "clinical_status": row["clinical_status"], "clinical_reason": str(exc)}
    align = getattr(measure, "align", None)
    if align is not None:
        pred_m = align(gt_m, pred_m)
    record["pred"] = pred_m
    errors = clinical_errors(gt_m, pred_m)
    record["errors"] = errors
    row.update(scalar_columns(pred_m, "pred_"))
    row.update(errors)
    return row, {**record, "clinical_status": "ok", "clinical_reason": ""}
