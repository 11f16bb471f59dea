"""The fast surface distances equal surface-distance's, element for element."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import surface_distance as sd
from scipy import ndimage

from xray3d.metrics.surface import surface_distances

from ..conftest import SHARED_DATA

KEYS = ("distances_gt_to_pred", "distances_pred_to_gt", "surfel_areas_gt", "surfel_areas_pred")


def _assert_same(gt: np.ndarray, pred: np.ndarray, spacing: tuple[float, float, float]) -> None:
    ours = surface_distances(gt, pred, spacing)
    ref = sd.compute_surface_distances(gt, pred, spacing)
    for key in KEYS:
        assert ours[key].shape == ref[key].shape, key
        np.testing.assert_allclose(ours[key], ref[key], rtol=1e-12, atol=1e-12, err_msg=key)
    tol = 1.5
    assert sd.compute_robust_hausdorff(ours, 95) == pytest.approx(sd.compute_robust_hausdorff(ref, 95))
    assert sd.compute_surface_dice_at_tolerance(ours, tol) == pytest.approx(
        sd.compute_surface_dice_at_tolerance(ref, tol)
    )


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 1.3, 2.5)])
def test_random_blobs_equal_the_library(seed, spacing):
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(12, 30, size=3))
    gt = ndimage.gaussian_filter(rng.random(shape), 2.0) > 0.5
    pred = ndimage.gaussian_filter(rng.random(shape), 2.0) > 0.5
    gt[0] |= rng.random(shape[1:]) > 0.7  # objects touching the array border, as predictions do
    assert gt.any() and pred.any()
    _assert_same(gt, pred, spacing)


def test_identical_and_touching_border_masks():
    gt = np.zeros((10, 12, 14), dtype=bool)
    gt[:, 3:9, 4:14] = True
    _assert_same(gt, gt.copy(), (1.0, 2.0, 0.5))
    d = surface_distances(gt, gt.copy(), (1.0, 2.0, 0.5))
    assert (d["distances_gt_to_pred"] == 0).all()


def test_empty_masks_follow_the_library():
    gt = np.zeros((8, 8, 8), dtype=bool)
    gt[2:5, 2:5, 2:5] = True
    empty = np.zeros_like(gt)
    d = surface_distances(gt, empty, (1.0, 1.0, 1.0))
    assert np.isinf(d["distances_gt_to_pred"]).all() and len(d["distances_gt_to_pred"]) > 0
    assert len(d["distances_pred_to_gt"]) == 0 and len(d["surfel_areas_pred"]) == 0
    both = surface_distances(empty, empty, (1.0, 1.0, 1.0))
    assert all(len(v) == 0 for v in both.values())


def test_rejects_bad_arguments():
    a = np.zeros((4, 4, 4), dtype=bool)
    with pytest.raises(ValueError, match="boolean 3D"):
        surface_distances(a.astype(np.uint8), a, (1, 1, 1))
    with pytest.raises(ValueError, match="one 3D shape"):
        surface_distances(a, a[:3], (1, 1, 1))
    with pytest.raises(ValueError, match="spacing_mm"):
        surface_distances(a, a, (1, 1))


@pytest.mark.skipif(not (SHARED_DATA / "xrayto3d-masks").is_dir(), reason="../shared/data not present")
def test_real_femur_equals_the_library():
    img = nib.load(SHARED_DATA / "xrayto3d-masks" / "s0015_femur_left_msk_gt.nii.gz")
    gt = np.asanyarray(img.dataobj) > 0
    pred = ndimage.binary_erosion(np.roll(gt, 2, axis=0))
    _assert_same(gt, pred, (1.0, 1.0, 1.0))


def test_mostly_shared_surface_equals_the_library():
    """A good prediction shares most border voxels with the ground truth (distance 0, no query)."""
    zz, yy, xx = np.mgrid[:30, :30, :30] - 15
    gt = zz**2 + yy**2 + (xx / 1.5) ** 2 <= 100
    pred = gt.copy()
    pred[:15] = ndimage.binary_dilation(gt)[:15]  # one half grown by a voxel, the other half exact
    pred[20:, :, 20:] = False  # and a missing cap
    d = surface_distances(gt, pred, (1.0, 1.0, 2.0))
    assert 0.2 < (d["distances_gt_to_pred"] == 0).mean() < 0.9
    _assert_same(gt, pred, (1.0, 1.0, 2.0))


@pytest.mark.parametrize("radius", [0, 1, 3])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 1.3, 2.5)])
def test_lattice_search_and_kd_tree_fallback_equal_the_library(monkeypatch, radius, spacing):
    """Near voxels are found on the lattice, far ones (beyond the radius) by the k-d tree: both exact."""
    import xray3d.metrics.surface as surface

    monkeypatch.setattr(surface, "_LATTICE_RADIUS", radius)
    gt = np.zeros((40, 36, 30), bool)
    gt[5:20, 6:25, 4:18] = True
    pred = np.roll(gt, (1, 2, -1), (0, 1, 2))  # near: within a few voxels
    pred[28:36, 25:33, 20:28] = True  # a far fragment (> 8 voxels from the ground truth)
    pred[10:14, 10:14, 8:12] = False  # a hole
    _assert_same(gt, pred, spacing)
    hits, far = surface._nearest_by_lattice(np.argwhere(pred), gt, np.asarray(spacing), radius)
    assert (len(far) > 0) and (radius == 0 or np.isfinite(hits).sum() > 0)
