"""Anatomy-level augmentation (xray3d/data/augment.py)."""

from __future__ import annotations

import pytest
import torch

from xray3d.data.augment import AnatomyAugment, apply_variants


def _box(s: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A PIR batch of two: a 'bone' box (1000 HU) off-centre to the right, in soft tissue (40 HU)."""
    ct = torch.full((2, 1, s, s, s), 40.0)
    mask = torch.zeros((2, 1, s, s, s))
    mask[:, :, 10:20, 10:22, 18:28] = 1
    ct[mask.bool()] = 1000.0
    return ct, mask


def test_off_is_the_identity():
    ct, mask = _box()
    aug = AnatomyAugment()
    assert not aug.active
    out_ct, out_mask = aug(ct, mask)
    assert out_ct is ct and out_mask is mask


def test_mirroring_flips_the_right_left_axis_of_ct_and_mask_together():
    ct, mask = _box()
    out_ct, out_mask = AnatomyAugment(flip_lr_prob=1.0)(ct, mask, torch.Generator().manual_seed(0))
    assert torch.equal(out_mask, mask.flip(-1)) and torch.equal(out_ct, ct.flip(-1))
    # the box moved from the right half to the left half of the R axis; P and I untouched
    assert out_mask[0, 0].sum(dim=(0, 1))[:14].sum() > 0 and mask[0, 0].sum(dim=(0, 1))[:14].sum() == 0


def test_scaling_changes_the_volume_by_the_cube_of_the_factor_and_keeps_ct_and_mask_aligned():
    ct, mask = _box(48)
    g = torch.Generator().manual_seed(3)
    out_ct, out_mask = AnatomyAugment(scale=0.2)(ct, mask, g)
    for i in range(2):
        ratio = (out_mask[i].sum() / mask[i].sum()).item()
        assert 0.8**3 * 0.9 < ratio < 1.2**3 * 1.1 and abs(ratio - 1) > 1e-3
        # bone HU where the mask is, soft tissue elsewhere: the two moved together
        inside = out_ct[i][out_mask[i].bool()]
        assert inside.median() > 900
    assert set(out_mask.unique().tolist()) <= {0.0, 1.0}


def test_rotation_is_reproducible_from_the_generator_and_differs_per_draw():
    ct, mask = _box()
    aug = AnatomyAugment(rotation_deg=10.0)
    a = aug(ct, mask, torch.Generator().manual_seed(1))
    b = aug(ct, mask, torch.Generator().manual_seed(1))
    c = aug(ct, mask, torch.Generator().manual_seed(2))
    assert torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])
    assert not torch.equal(a[1][0], a[1][1])  # each sample of the batch gets its own rotation


def test_bone_density_scales_only_hu_above_the_threshold():
    ct, mask = _box()
    out_ct, out_mask = AnatomyAugment(bone_density=0.1)(ct, mask, torch.Generator().manual_seed(0))
    assert torch.equal(out_mask, mask)
    assert torch.all(out_ct[~mask.bool()] == 40.0)
    bone = out_ct[mask.bool()].view(2, -1)
    for i in range(2):
        assert torch.all(bone[i] == bone[i][0])  # one factor per sample
        factor = (bone[i][0] - 200) / 800
        assert 0.9 - 1e-5 <= factor <= 1.1 + 1e-5


@pytest.mark.parametrize(
    "kwargs",
    [{"scale": -0.1}, {"rotation_deg": -1}, {"flip_lr_prob": 1.5}, {"bone_density": -0.2}, {"scale": 1.0}],
)
def test_bad_settings_name_the_option(kwargs):
    with pytest.raises(ValueError, match="data.augment"):
        AnatomyAugment(**kwargs)


def _extent(mask: torch.Tensor, axis: int) -> int:
    """Number of slices along PIR ``axis`` (0 P, 1 I, 2 R) holding mask voxels, of ``(1, s, s, s)``."""
    dims = tuple(d for d in (0, 1, 2) if d != axis)
    return int((mask[0].sum(dim=dims) > 0).sum())


def test_a_scale_range_only_enlarges_within_its_bounds():
    ct, mask = _box(48)
    out_ct, out_mask = AnatomyAugment(scale=[1.2, 1.4])(ct, mask, torch.Generator().manual_seed(5))
    for i in range(2):
        ratio = (out_mask[i].sum() / mask[i].sum()).item()
        assert 1.2**3 * 0.85 < ratio < 1.4**3 * 1.15
        assert out_ct[i][out_mask[i].bool()].median() > 900


@pytest.mark.parametrize("scale", [[1.2], [1.5, 1.1], [0.0, 1.2]])
def test_a_bad_scale_range_names_the_option(scale):
    with pytest.raises(ValueError, match=r"data.augment.scale=\[lo, hi\]"):
        AnatomyAugment(scale=scale)


def test_anisotropy_changes_the_axes_by_different_factors():
    ct, mask = _box(48)
    _, out = AnatomyAugment(anisotropy=0.3)(ct, mask, torch.Generator().manual_seed(0))
    for i in range(2):
        ratios = [_extent(out[i], a) / _extent(mask[i], a) for a in range(3)]
        assert all(0.6 < r < 1.45 for r in ratios)
        assert max(ratios) - min(ratios) > 0.05


def test_lowres_smooths_the_ct_and_keeps_the_mask_sharp():
    ct, mask = _box()
    out_ct, out_mask = AnatomyAugment(lowres_prob=1.0)(ct, mask, torch.Generator().manual_seed(0))
    assert torch.equal(out_mask, mask)
    # the bone edge is blurred: values between soft tissue and bone appear, the mean is kept
    between = ((out_ct > 100) & (out_ct < 900)).sum()
    assert between > 0 and ((ct > 100) & (ct < 900)).sum() == 0
    assert out_ct.mean().item() == pytest.approx(ct.mean().item(), rel=0.02)


def test_fixed_variants_scale_each_pir_axis_and_leave_unit_samples_untouched():
    ct, mask = _box(48)
    factors = torch.tensor([[1.0, 1.0, 1.0], [1.5, 1.0, 1.0]])
    out_ct, out_mask = apply_variants(ct, mask, factors, torch.tensor([False, False]))
    assert torch.equal(out_ct[0], ct[0]) and torch.equal(out_mask[0], mask[0])
    # sample 1: only the P extent grows by 1.5 (box 10 slices along P), I and R unchanged
    assert _extent(out_mask[1], 0) == pytest.approx(15, abs=1)
    assert _extent(out_mask[1], 1) == _extent(mask[1], 1) and _extent(out_mask[1], 2) == _extent(mask[1], 2)
    _, flipped = apply_variants(ct, mask, torch.ones(2, 3), torch.tensor([True, False]))
    assert torch.equal(flipped[0], mask[0].flip(-1)) and torch.equal(flipped[1], mask[1])
