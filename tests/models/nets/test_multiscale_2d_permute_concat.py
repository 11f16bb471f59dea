"""MultiScale2DPermuteConcat (spec §3.5): shapes, parameter counts, layer lists and LAT axis alignment."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xray3d.models.nets.multiscale_2d_permute_concat import MultiScale2DPermuteConcat

from .axis_probe import EXPECTED_MOVES, axis_moves, positive_probe

# Exact counts of xray3d's model, and spec §3.1's counts of the reference, which also holds upsamplers it
# never calls: 8 transposed Conv3d 32->32 and 5 transposed Conv2d d->d (d = 4, 8, 16, 32, 64) per view.
PARAMS = {64: (2_653_521, 2.84e6), 128: (3_080_433, 3.16e6)}
_UP3D = 32 * 32 * 27 + 32 + 2 * 32  # transposed Conv3d 32->32, k3, + BatchNorm


def _up2d(d: int) -> int:
    return d * d * 9 + d + 2 * d  # transposed Conv2d d->d, k3, + BatchNorm


@pytest.mark.parametrize(("s", "batch"), [(16, 2), (32, 2), (64, 1)])
def test_output_shape(s: int, batch: int) -> None:
    model = MultiScale2DPermuteConcat(img_size=s).eval()
    with torch.no_grad():
        out = model(torch.rand(batch, 1, s, s), torch.rand(batch, 1, s, s))
    assert out.shape == (batch, 1, s, s, s)


def test_trains_one_step() -> None:
    model = MultiScale2DPermuteConcat(img_size=32).train()
    model(torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)).mean().backward()
    assert all(p.grad is not None for p in model.parameters())  # no dead layers


@pytest.mark.parametrize("s", sorted(PARAMS))
def test_parameter_count(s: int) -> None:
    """xray3d has exactly the layers it uses; adding the reference's unused upsamplers gives spec §3.1."""
    exact, spec = PARAMS[s]
    n = sum(p.numel() for p in MultiScale2DPermuteConcat(img_size=s).parameters())
    assert n == exact
    used_3d, used_2d = {64: (4, [4, 8, 16, 32]), 128: (5, [4, 8, 16, 32, 64])}[s]
    unused = (8 - used_3d) * _UP3D + 2 * sum(_up2d(d) for d in [4, 8, 16, 32, 64] if d not in used_2d)
    assert n + unused == pytest.approx(spec, rel=0.005)
    if s == 128:
        assert n == pytest.approx(spec, rel=0.05)


@pytest.mark.parametrize(
    ("s", "enc_out", "dec_in"),
    [
        (128, [24, 40, 72, 136, 264, 520], [520, 268, 144, 88, 72, 88]),
        (64, [32, 64, 128, 256, 512], [512, 260, 136, 80, 64]),
    ],
)
def test_layer_configuration(s: int, enc_out: list[int], dec_in: list[int]) -> None:
    model = MultiScale2DPermuteConcat(img_size=s)
    assert model.ap_encoder.out_channels == enc_out[::-1]  # coarse-first
    assert all(len(b.layers) == 4 for b in model.ap_encoder.blocks)
    convs = [seq[0] for seq in model.ap_decoder.convs]
    assert [c.in_channels for c in convs] == dec_in
    assert [c.out_channels for c in convs] == [4 << k for k in range(len(dec_in))]
    fusion = [seq[0] for seq in model.fusion_convs]
    assert [c.in_channels for c in fusion] == [2] + [34] * (len(dec_in) - 1)
    assert len(model.fusion_ups) == len(dec_in) - 1


def test_arguments() -> None:
    model = MultiScale2DPermuteConcat(img_size=16, dropout=0.25)
    assert {m.p for m in model.modules() if isinstance(m, nn.Dropout)} == {0.25}
    assert not any(isinstance(m, nn.Dropout) for m in model.ap_encoder.modules())
    assert MultiScale2DPermuteConcat.input_family == "two_view"
    with pytest.raises(ValueError, match="one entry per pyramid level"):
        MultiScale2DPermuteConcat(img_size=32, growth_rates=[4, 8])


@pytest.mark.parametrize("s", [0, 8, 48, 100])
def test_rejects_bad_img_size(s: int) -> None:
    with pytest.raises(ValueError, match="power of two >= 16"):
        MultiScale2DPermuteConcat(img_size=s)


def test_axis_alignment() -> None:
    """AP channels -> P, AP (I, R) -> (I, R); LAT (P, I) -> (P, I), LAT channels -> R."""
    s = 32
    assert (
        axis_moves(positive_probe(MultiScale2DPermuteConcat(img_size=s)), s, min_shift=s / 4)
        == EXPECTED_MOVES
    )


def test_axis_check_catches_the_reference_lat_transpose() -> None:
    """The reference's ``lat.transpose(1, -1)`` puts the LAT image's P on volume I and its I on volume P."""
    s = 32
    model = positive_probe(MultiScale2DPermuteConcat(img_size=s))
    model.lat_to_volume = lambda lat_map: lat_map.transpose(1, -1).unsqueeze(1).contiguous()
    moves = axis_moves(model, s, min_shift=s / 4)
    assert moves != EXPECTED_MOVES
    assert moves["P"][1] == (0, 1) and moves["I"][1] == (1, 0)  # LAT rows follow I, columns follow P
