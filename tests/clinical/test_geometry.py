"""Geometry helpers: known answers and equality with the scipy functions they replace."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from xray3d.clinical.base import ClinicalError
from xray3d.clinical.geometry import (
    boundary_voxels,
    crop_to_foreground,
    fill_holes,
    fit_sphere,
    label_components,
    surface_points_mm,
)


@pytest.mark.parametrize("seed", range(5))
def test_fill_holes_equals_scipy(seed):
    rng = np.random.default_rng(seed)
    mask = ndimage.gaussian_filter(rng.random((20, 17, 23)), 1.2) > 0.48  # touches the border
    mask[4:12, 4:12, 4:12] = True
    mask[6:10, 6:10, 6:10] = rng.random((4, 4, 4)) > 0.7  # a cavity with islands in it
    expected = ndimage.binary_fill_holes(mask)
    assert (expected != mask).any()
    np.testing.assert_array_equal(fill_holes(mask), expected)
    np.testing.assert_array_equal(fill_holes(np.asfortranarray(mask)), expected)


@pytest.mark.parametrize("connectivity", [6, 26])
@pytest.mark.parametrize("order", ["C", "F"])
def test_label_components_equals_scipy_label(connectivity, order):
    rng = np.random.default_rng(connectivity)
    mask = ndimage.gaussian_filter(rng.random((19, 24, 21)), 0.8) > 0.54  # many pieces, on the border
    mask = np.asarray(mask, order=order)
    structure = np.ones((3, 3, 3), bool) if connectivity == 26 else None
    expected, n = ndimage.label(mask, structure=structure)
    assert n > 5
    labels, count = label_components(mask, connectivity)
    assert count == n
    np.testing.assert_array_equal(labels, expected)  # same numbering, whatever the memory order
    assert label_components(np.zeros((3, 4, 5), bool))[1] == 0


def test_fill_holes_fills_a_hollow_ball_and_keeps_an_open_cup():
    zz, yy, xx = np.mgrid[:21, :21, :21] - 10
    r = np.sqrt(zz**2 + yy**2 + xx**2)
    shell = (r <= 8) & (r >= 5)
    filled = fill_holes(shell)
    assert filled[10, 10, 10] and filled.sum() == (r <= 8).sum()
    cup = shell & (zz < 2)  # opened at the top: nothing enclosed
    np.testing.assert_array_equal(fill_holes(cup), cup)
    assert fill_holes(np.ones((3, 3, 3), bool)).all() and not fill_holes(np.zeros((3, 3, 3), bool)).any()


def test_crop_to_foreground_pads_and_shifts_the_affine():
    mask = np.zeros((10, 12, 14), bool)
    mask[3:5, 4:9, 7] = True
    affine = np.diag([2.0, 1.0, 0.5, 1.0])
    crop, crop_aff = crop_to_foreground(mask, affine, pad=2)
    assert crop.shape == (2 + 4, 5 + 4, 1 + 4) and crop.sum() == mask.sum()
    np.testing.assert_allclose(crop_aff[:3, 3], [2.0 * 1, 1.0 * 2, 0.5 * 5])
    with pytest.raises(ClinicalError, match="empty"):
        crop_to_foreground(np.zeros((4, 4, 4), bool), affine)


def test_surface_points_of_a_voxel_cube_are_its_face_centres():
    mask = np.zeros((5, 5, 5), bool)
    mask[1:3, 1:3, 1:3] = True  # a 2x2x2 cube: 6 faces x 4 voxel faces
    pts = surface_points_mm(mask, np.eye(4))
    assert len(pts) == 24
    assert set(np.unique(pts)) == {0.5, 1.0, 2.0, 2.5}
    np.testing.assert_allclose(pts.mean(0), [1.5, 1.5, 1.5])


@pytest.mark.parametrize("seed", range(3))
def test_boundary_and_face_centres_equal_their_definitions(seed):
    rng = np.random.default_rng(seed)
    mask = ndimage.gaussian_filter(rng.random((14, 17, 11)), 1.0) > 0.5  # touches the array border
    boundary = boundary_voxels(mask)
    np.testing.assert_array_equal(boundary, np.argwhere(mask & ~ndimage.binary_erosion(mask)))
    # by definition: per face direction, the voxels whose neighbour there is background (or outside)
    padded = np.pad(mask, 1)
    expected = []
    for axis in range(3):
        for step in (-1, 1):
            neighbour = np.roll(padded, -step, axis=axis)[1:-1, 1:-1, 1:-1]
            idx = np.argwhere(mask & ~neighbour).astype(float)
            idx[:, axis] += 0.5 * step
            expected.append(idx)
    affine = np.array([[0, 0, 2.0, 5], [0, -0.7, 0, 1], [1.3, 0, 0, -2], [0, 0, 0, 1]])
    expected = np.concatenate(expected) @ affine[:3, :3].T + affine[:3, 3]
    np.testing.assert_array_equal(surface_points_mm(mask, affine), expected)  # same points, same order
    np.testing.assert_array_equal(surface_points_mm(mask, affine, boundary), expected)
    np.testing.assert_array_equal(surface_points_mm(np.asfortranarray(mask), affine), expected)


def test_fit_sphere_recovers_a_noisy_sphere_with_outliers():
    rng = np.random.default_rng(0)
    d = rng.normal(size=(2000, 3))
    pts = np.array([3.0, -2.0, 5.0]) + 12.0 * d / np.linalg.norm(d, axis=1, keepdims=True)
    pts += rng.normal(scale=0.2, size=pts.shape)
    pts[:200] = rng.uniform(-20, 20, size=(200, 3))  # 10 % outliers
    c, r, _ = fit_sphere(pts, np.zeros(3), 10.0)
    np.testing.assert_allclose(c, [3.0, -2.0, 5.0], atol=0.05)
    assert r == pytest.approx(12.0, abs=0.05)
