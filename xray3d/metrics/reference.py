"""Image metrics in the convention of the reference benchmark (benchmark spec §5), reproduced exactly.

The caller binarises the prediction (threshold 0.5 of the sigmoid); no post-processing is applied.
Per case, on the voxel grid of the masks:

* ``dice``: MONAI ``compute_dice(include_background=True, ignore_empty=True)`` (what ``DiceMetric()``
  computes per sample). An empty ground truth gives NaN (MONAI's ``ignore_empty``).
* ``hd95_vox``: MONAI ``compute_hausdorff_distance(percentile=95)``, symmetric (``directed=False``),
  Euclidean, **without spacing: voxel units**, whatever the voxel size. Distances are between boundary voxels
  (``mask XOR erosion(mask)``); the symmetric value is the max of the two directed 95th percentiles.
* ``asd_vox``: MONAI ``compute_average_surface_distance(symmetric=False)`` without spacing: **voxel units**,
  one-directional: the mean, over the boundary voxels of the *prediction*, of the distance to the nearest
  boundary voxel of the *ground truth* (MONAI's ``y_pred -> y`` direction).
* ``nsd``: DeepMind surface-distance
  ``compute_surface_overlap_at_tolerance(compute_surface_distances(gt, pred, spacing_mm), tol)[0]``:
  the fraction of the ground-truth surface area within ``tol`` mm of the predicted surface (one-directional,
  surfel-area weighted; not the symmetric surface Dice). Spacing is used here only.

Empty masks never reach the distance code (surface-distance 0.1 crashes on them under NumPy 2; MONAI 1.6
warns). Their values follow the reference run (MONAI 1.1 + surface-distance under NumPy 1):

=============  ======  ===========  ===========  =====
case           dice    hd95_vox     asd_vox      nsd
=============  ======  ===========  ===========  =====
both empty     NaN     NaN          NaN          NaN
empty pred     0.0     NaN          inf          0.0
empty gt       NaN     NaN          inf          NaN
=============  ======  ===========  ===========  =====

Why: with exactly one empty mask, MONAI 1.1's ``get_surface_distance`` returns an all-inf array of
distances in both directions. The ASD is their mean (inf), the HD95 their 95th percentile, and
``np.percentile`` of an all-inf array interpolates ``inf - inf`` to NaN, so the symmetric HD95 is NaN.
The reference's stored per-case logs show this (``DSC,ASD,HD95,NSD`` = ``nan,inf,nan,nan`` for the empty
ground truths of its RSNA domain-shift runs). Its aggregation drops both ±inf and NaN, so the aggregate is
the same either way; the per-case rows differ. The reference rounds per-case values to 2 decimals before
averaging; that is done at aggregation (:func:`xray3d.metrics.report.round_like_reference`), not here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import surface_distance as sd
import torch
from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance

from xray3d.metrics.image import binary_pair
from xray3d.metrics.surface import surface_distances

__all__ = ["reference_metrics", "REFERENCE_METRIC_KEYS", "REFERENCE_NSD_TOLERANCE_MM"]

REFERENCE_METRIC_KEYS = ("dice", "hd95_vox", "asd_vox", "nsd")
REFERENCE_NSD_TOLERANCE_MM = 1.5


def _as_bcx(mask: np.ndarray) -> torch.Tensor:
    """A (D, H, W) boolean mask as a float MONAI tensor of shape (1, 1, D, H, W)."""
    return torch.as_tensor(mask, dtype=torch.float32)[None, None]


def reference_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing_mm: float | Sequence[float],
    nsd_tolerance_mm: float = REFERENCE_NSD_TOLERANCE_MM,
) -> dict[str, float | bool]:
    """Dice, HD95 (voxels), ASD (voxels, prediction -> GT) and NSD (GT side) as the reference computes them.

    Args:
        pred: binarised prediction (non-zero = foreground), shape (D, H, W).
        gt: ground-truth mask, same shape.
        spacing_mm: voxel size in mm, one value or one per axis; used by the NSD only.
        nsd_tolerance_mm: NSD tolerance in mm (the reference always uses 1.5).

    Returns:
        ``{"dice", "hd95_vox", "asd_vox", "nsd", "empty_pred", "empty_gt"}`` (raw, unrounded values).
    """
    pred, gt, spacing = binary_pair(pred, gt, spacing_mm)
    empty_pred, empty_gt = not pred.any(), not gt.any()
    out: dict[str, float | bool] = {"empty_pred": empty_pred, "empty_gt": empty_gt}
    if empty_gt:
        asd = math.nan if empty_pred else math.inf
        out.update(dice=math.nan, hd95_vox=math.nan, asd_vox=asd, nsd=math.nan)
        return out
    if empty_pred:
        out.update(dice=0.0, hd95_vox=math.nan, asd_vox=math.inf, nsd=0.0)
        return out
    p, g = _as_bcx(pred), _as_bcx(gt)
    with warnings.catch_warnings():  # MONAI 1.6 deprecation noise from get_mask_edges
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        dice = compute_dice(p, g, include_background=True, ignore_empty=True)
        hd95 = compute_hausdorff_distance(p, g, include_background=True, percentile=95, directed=False)
        asd = compute_average_surface_distance(p, g, include_background=True, symmetric=False)
    dists = surface_distances(gt, pred, spacing)  # == sd.compute_surface_distances, faster
    nsd = sd.compute_surface_overlap_at_tolerance(dists, nsd_tolerance_mm)[0]
    out.update(
        dice=float(dice.item()),
        hd95_vox=float(hd95.item()),
        asd_vox=float(asd.item()),
        nsd=float(nsd),
    )
    return out
