"""Known-answer tests of the image metrics (mm)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xray3d.metrics.image import binary_metrics


def cube(shape=(40, 40, 40), lo=(10, 10, 10), size=(12, 12, 12)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[lo[0] : lo[0] + size[0], lo[1] : lo[1] + size[1], lo[2] : lo[2] + size[2]] = True
    return m


def test_identical_masks():
    m = cube()
    r = binary_metrics(m, m, 1.5)
    assert r["dice"] == pytest.approx(1.0)
    assert r["hd95_mm"] == 0.0 and r["asd_mm"] == 0.0 and r["nsd"] == pytest.approx(1.0)


@pytest.mark.parametrize("spacing", [1.0, 1.5, 2.5])
def test_shifted_cube_distances_in_mm(spacing):
    gt = cube()
    pred = cube(lo=(13, 10, 10))  # shifted 3 voxels along axis 0
    r = binary_metrics(pred, gt, spacing)
    # Dice of two 12^3 cubes overlapping over 9 of 12 slices.
    assert r["dice"] == pytest.approx(2 * 9 / 24)
    # The farthest surface points are the two shifted end faces: 3 voxels apart.
    assert r["hd95_mm"] == pytest.approx(3 * spacing, rel=0.01)
    # Tolerance of 1 voxel: only part of the surface agrees, so NSD is strictly between 0 and 1.
    assert 0.0 < r["nsd"] < 1.0
    assert 0 < r["asd_mm"] < 3 * spacing


def test_anisotropic_spacing_uses_the_shifted_axis():
    gt = cube()
    pred = cube(lo=(10, 10, 12))  # 2 voxels along axis 2
    r = binary_metrics(pred, gt, (1.0, 1.0, 2.5))
    assert r["hd95_mm"] == pytest.approx(5.0, rel=0.01)
    r_iso = binary_metrics(pred, gt, 1.0)
    assert r_iso["hd95_mm"] == pytest.approx(2.0, rel=0.01)


def test_nsd_tolerance_covers_the_shift():
    gt, pred = cube(), cube(lo=(11, 10, 10))
    assert binary_metrics(pred, gt, 1.0, nsd_tolerance_mm=1.01)["nsd"] == pytest.approx(1.0)


def test_empty_prediction_is_reported_not_crashing():
    gt = cube()
    r = binary_metrics(np.zeros_like(gt), gt, 1.5)
    assert r["empty_pred"] and not r["empty_gt"]
    assert r["dice"] == 0.0 and math.isinf(r["hd95_mm"]) and math.isinf(r["asd_mm"]) and r["nsd"] == 0.0


def test_both_empty_is_perfect_agreement():
    z = np.zeros((8, 8, 8), bool)
    r = binary_metrics(z, z, 1.0)
    assert r["dice"] == 1.0 and r["hd95_mm"] == 0.0 and r["empty_gt"] and r["empty_pred"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="one shape"):
        binary_metrics(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), 1.0)
    with pytest.raises(ValueError, match="spacing_mm"):
        binary_metrics(np.ones((4, 4, 4)), np.ones((4, 4, 4)), -1.0)


def sphere(radius_mm: float, spacing: tuple[float, float, float], extent_mm: float = 64.0) -> np.ndarray:
    """A ball of ``radius_mm`` centred in a box of ``extent_mm``, voxelised at ``spacing`` (mm)."""
    axes = [(np.arange(int(extent_mm / s)) + 0.5) * s - extent_mm / 2 for s in spacing]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    return x**2 + y**2 + z**2 <= radius_mm**2


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 1.0, 2.0)])
def test_concentric_spheres_known_answer_in_mm(spacing):
    gt, pred = sphere(20.0, spacing), sphere(24.0, spacing)  # every surface point is 4 mm from the other
    r = binary_metrics(pred, gt, spacing, nsd_tolerance_mm=1.5)
    assert r["dice"] == pytest.approx(2 * 20.0**3 / (20.0**3 + 24.0**3), abs=0.02)  # 0.733
    assert r["hd95_mm"] == pytest.approx(4.0, abs=1.0)  # voxelised surfaces: within a voxel
    assert r["asd_mm"] == pytest.approx(4.0, abs=0.75)  # measured between border voxels: 3.35-3.49
    assert r["nsd"] < 0.1  # 4 mm apart, 1.5 mm tolerance
    assert binary_metrics(pred, gt, spacing, nsd_tolerance_mm=5.0)["nsd"] > 0.95
