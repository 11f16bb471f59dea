"""ROI extraction onto the PIR training grid (tiny synthetic volumes)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from xray3d.data.io import DataError
from xray3d.data.roi import (
    PRESETS,
    extract_roi,
    label_centroid_mm,
    largest_component,
    pir_grid_affine,
    touches_border,
)


def synthetic_ct(shape=(40, 40, 30), spacing=(1.0, 1.0, 2.0)):
    """A RAS CT in HU (-2048 outside a 'scan circle' corner) with a bone blob off-centre."""
    ct = np.full(shape, 0.0, np.float32)
    ct[:3, :3, :] = -2048.0
    mask = np.zeros(shape, bool)
    mask[25:31, 8:14, 10:14] = True  # right-ish, posterior-ish (RAS indices)
    ct[mask] = 1200.0
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = [-20.0, -20.0, -30.0]
    return nib.Nifti1Image(ct, aff), mask


def test_roi_is_centred_pir_and_padded_with_air():
    ct, mask = synthetic_ct()
    centre = label_centroid_mm(mask, ct.affine)
    ct_roi, msk_roi = extract_roi(ct, mask, centre, grid_size=32, spacing_mm=1.5)
    assert nib.aff2axcodes(ct_roi.affine) == ("P", "I", "R")
    assert ct_roi.shape == msk_roi.shape == (32, 32, 32)
    m = np.asarray(msk_roi.dataobj)
    # The blob's centre of mass lands in the middle of the ROI.
    com = np.argwhere(m).mean(axis=0)
    assert np.allclose(com, 15.5, atol=1.0)
    # Volume preserved within resampling tolerance: 6*6*4 voxels of 1x1x2 mm = 288 mm^3.
    assert m.sum() * 1.5**3 == pytest.approx(288.0, rel=0.35)
    data = np.asarray(ct_roi.dataobj)
    assert data.min() >= -1024.0  # -2048 clipped, outside-of-scan padded with air
    assert (data == -1024.0).any()


def test_roi_world_position_matches_affine():
    ct, mask = synthetic_ct()
    centre = label_centroid_mm(mask, ct.affine)
    aff = pir_grid_affine(centre, 32, 1.5)
    mid = aff[:3, :3] @ np.full(3, 15.5) + aff[:3, 3]
    assert np.allclose(mid, centre)


def test_mismatched_grids_and_nan_are_rejected():
    ct, mask = synthetic_ct()
    with pytest.raises(DataError, match="share one grid"):
        extract_roi(ct, mask[:-1], np.zeros(3), 16, 1.5)
    data = np.asarray(ct.dataobj).copy()
    data[0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        extract_roi(nib.Nifti1Image(data, ct.affine), mask, np.zeros(3), 16, 1.5)
    with pytest.raises(DataError, match="empty"):
        label_centroid_mm(np.zeros((4, 4, 4), bool), np.eye(4))


def test_border_and_components():
    m = np.zeros((10, 10, 10), bool)
    m[4:6, 4:6, 4:6] = True
    assert not touches_border(m)
    m[0, 5, 5] = True
    assert touches_border(m)
    assert largest_component(m).sum() == 8


def test_presets_match_the_reference():
    assert PRESETS["vertebra"].spacing_mm == 1.5 and PRESETS["vertebra"].grid_size == 64
    assert PRESETS["hip"].spacing_mm == 2.25 and PRESETS["rib"].spacing_mm == 2.5
    assert PRESETS["femur"].spacing_mm == 1.0
