"""Known-answer tests of the reference metric convention (voxel-unit HD95/ASD, GT-side NSD)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xray3d.metrics.image import binary_metrics, metric_keys
from xray3d.metrics.reference import REFERENCE_METRIC_KEYS, reference_metrics

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def cube(shape=(40, 40, 40), lo=(10, 10, 10), size=(12, 12, 12)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[lo[0] : lo[0] + size[0], lo[1] : lo[1] + size[1], lo[2] : lo[2] + size[2]] = True
    return m


def sphere(radius: float, shape=(48, 48, 48)) -> np.ndarray:
    c = (np.array(shape) - 1) / 2
    grid = np.indices(shape) - c[:, None, None, None]
    return (grid**2).sum(0) <= radius**2


def plate(x: int) -> np.ndarray:
    """A one-voxel-thick 12x12 plate at ``axis0 == x`` (every voxel is a boundary voxel)."""
    m = np.zeros((40, 40, 40), bool)
    m[x, 10:22, 10:22] = True
    return m


def test_keys_state_units():
    assert REFERENCE_METRIC_KEYS == ("dice", "hd95_vox", "asd_vox", "nsd")
    assert metric_keys("reference") == REFERENCE_METRIC_KEYS
    assert metric_keys("mm") == ("dice", "hd95_mm", "asd_mm", "nsd")
    with pytest.raises(ValueError, match="convention"):
        binary_metrics(cube(), cube(), 1.0, convention="cm")


def test_identical_masks():
    r = binary_metrics(cube(), cube(), 1.5, convention="reference")
    assert set(r) == {*REFERENCE_METRIC_KEYS, "empty_pred", "empty_gt"}
    assert r["dice"] == pytest.approx(1.0)
    assert r["hd95_vox"] == 0.0 and r["asd_vox"] == 0.0 and r["nsd"] == pytest.approx(1.0)


@pytest.mark.parametrize("spacing", [1.0, 2.5])
def test_shift_by_one_voxel_known_answer(spacing):
    gt, pred = cube(), cube(lo=(11, 10, 10))
    r = reference_metrics(pred, gt, spacing)
    assert r["dice"] == pytest.approx(2 * 11 / 24)
    # Voxel units whatever the spacing: the far end face of the prediction is 1 voxel from the GT's.
    assert r["hd95_vox"] == pytest.approx(1.0)
    # Prediction boundary (12^3 - 10^3 = 728 voxels) -> GT boundary: 144 far-face voxels and the 100
    # interior voxels of the near face are 1 voxel away, the other 484 lie on the GT boundary.
    assert r["asd_vox"] == pytest.approx(244 / 728)
    # NSD uses the spacing: within 1.5 mm at 1 mm voxels, not at 2.5 mm voxels.
    if spacing == 1.0:
        assert r["nsd"] == pytest.approx(1.0)
    else:
        assert 0.0 < r["nsd"] < 1.0


@pytest.mark.parametrize("spacing", [1.0, 1.5, 2.5])
def test_shifted_cube_hd95_in_voxels_vs_mm(spacing):
    gt, pred = cube(), cube(lo=(13, 10, 10))
    ref = binary_metrics(pred, gt, spacing, convention="reference")
    mm = binary_metrics(pred, gt, spacing)
    assert ref["dice"] == pytest.approx(mm["dice"]) == pytest.approx(2 * 9 / 24)
    assert ref["hd95_vox"] == pytest.approx(3.0)
    assert mm["hd95_mm"] == pytest.approx(3.0 * spacing, rel=0.01)


def test_anisotropic_spacing_is_ignored_by_reference_hd95():
    gt, pred = cube(), cube(lo=(10, 10, 12))  # 2 voxels along axis 2
    ref = binary_metrics(pred, gt, (1.0, 1.0, 2.5), convention="reference")
    mm = binary_metrics(pred, gt, (1.0, 1.0, 2.5))
    assert ref["hd95_vox"] == pytest.approx(2.0)
    assert mm["hd95_mm"] == pytest.approx(5.0, rel=0.01)
    assert ref["asd_vox"] == pytest.approx(binary_metrics(pred, gt, 1.0, convention="reference")["asd_vox"])


def test_asd_is_one_directional_prediction_to_gt():
    one, two = plate(10), plate(13) | plate(30)
    # pred = two plates, gt = one plate: half of the prediction boundary is 3 voxels away, half 20.
    r = reference_metrics(two, one, 1.0)
    assert r["asd_vox"] == pytest.approx((3 + 20) / 2)
    # pred = one plate, gt = two plates: every prediction voxel is 3 voxels from the nearest GT plate.
    r = reference_metrics(one, two, 1.0)
    assert r["asd_vox"] == pytest.approx(3.0)
    # HD95 is symmetric: the same both ways (the far plate is 20 voxels from the single plate).
    assert r["hd95_vox"] == pytest.approx(20.0) == reference_metrics(two, one, 1.0)["hd95_vox"]


def test_nsd_is_gt_side_overlap():
    # GT = one plate, pred = it plus a far plate: the whole GT surface is matched (NSD 1) although half
    # of the predicted surface is not; the symmetric surface Dice of the mm convention is below 1.
    one, two = plate(10), plate(10) | plate(30)
    assert reference_metrics(two, one, 1.0)["nsd"] == pytest.approx(1.0)
    assert binary_metrics(two, one, 1.0)["nsd"] < 0.9


@pytest.mark.parametrize("spacing", [1.0, 2.0])
def test_concentric_spheres(spacing):
    gt, pred = sphere(12), sphere(9)
    ref = binary_metrics(pred, gt, spacing, convention="reference")
    mm = binary_metrics(pred, gt, spacing)
    assert ref["dice"] == pytest.approx(2 * pred.sum() / (pred.sum() + gt.sum()))
    # Radii differ by 3 voxels; voxelisation moves boundary voxel centres by < 1 voxel.
    assert 2.0 <= ref["hd95_vox"] <= 4.0
    assert 2.0 * spacing <= mm["hd95_mm"] <= 4.0 * spacing
    assert ref["hd95_vox"] == pytest.approx(binary_metrics(pred, gt, 1.0, convention="reference")["hd95_vox"])
    assert binary_metrics(gt, gt, spacing, convention="reference")["hd95_vox"] == 0.0


def test_empty_prediction_gives_nan_hd95_and_inf_asd_not_a_crash():
    # MONAI 1.1: all-inf distances in both directions; their mean (ASD) is inf, their 95th percentile NaN
    gt = cube()
    r = reference_metrics(np.zeros_like(gt), gt, 1.5)
    assert r["empty_pred"] and not r["empty_gt"]
    assert r["dice"] == 0.0 and r["nsd"] == 0.0
    assert math.isnan(r["hd95_vox"]) and math.isinf(r["asd_vox"]) and r["asd_vox"] > 0


def test_empty_ground_truth_matches_the_reference_logged_row():
    """The reference's RSNA domain-shift ``metric-log.csv`` rows (``DSC,ASD,HD95,NSD``) of empty ground
    truths read ``nan,inf,nan,nan``."""
    z = np.zeros((20, 20, 20), bool)
    r = reference_metrics(cube(shape=(20, 20, 20), lo=(4, 4, 4), size=(5, 5, 5)), z, 1.0)
    assert r["empty_gt"] and not r["empty_pred"]
    logged = [r["dice"], r["asd_vox"], r["hd95_vox"], r["nsd"]]
    assert [("inf" if math.isinf(v) else "nan" if math.isnan(v) else v) for v in logged] == [
        "nan",
        "inf",
        "nan",
        "nan",
    ]
    both = reference_metrics(z, z, 1.0)
    assert all(math.isnan(both[k]) for k in REFERENCE_METRIC_KEYS)


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        reference_metrics(cube(), cube(shape=(40, 40, 41)), 1.0)
    with pytest.raises(ValueError, match="spacing"):
        reference_metrics(cube(), cube(), (1.0, 1.0))
