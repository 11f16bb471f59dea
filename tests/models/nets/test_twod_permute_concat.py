"""TwoDPermuteConcat (spec §3.3): shapes, parameter counts, argument checks and view-axis alignment."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xray3d.models.nets.twod_permute_concat import TwoDPermuteConcat

from .axis_probe import EXPECTED_MOVES, axis_moves, positive_probe

# spec §3.1: 1.25M at s=128, 1.19M at s=64; the exact counts pin the layer configuration.
PARAMS = {64: (1_194_049, 1.19e6), 128: (1_249_537, 1.25e6)}


@pytest.mark.parametrize(("s", "batch"), [(16, 2), (32, 2), (64, 1)])
def test_output_shape(s: int, batch: int) -> None:
    model = TwoDPermuteConcat(img_size=s).eval()
    with torch.no_grad():
        out = model(torch.rand(batch, 1, s, s), torch.rand(batch, 1, s, s))
    assert out.shape == (batch, 1, s, s, s)


def test_trains_one_step() -> None:
    model = TwoDPermuteConcat(img_size=32).train()
    out = model(torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32))
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("s", sorted(PARAMS))
def test_parameter_count(s: int) -> None:
    exact, spec = PARAMS[s]
    n = sum(p.numel() for p in TwoDPermuteConcat(img_size=s).parameters())
    assert n == exact
    assert n == pytest.approx(spec, rel=0.05)


@pytest.mark.parametrize("s", [64, 128])
def test_layer_configuration(s: int) -> None:
    model = TwoDPermuteConcat(img_size=s)
    convs = [m for m in model.ap_encoder.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 32, 32, 32, 32]
    assert [c.stride[0] for c in convs] == [2, 2, 1, 1, 1, 1]
    assert {c.kernel_size for c in convs} == {(7, 7)}
    ap_up = [m for m in model.ap_expansion.modules() if isinstance(m, nn.ConvTranspose3d)]
    lat_up = [m for m in model.lat_expansion.modules() if isinstance(m, nn.ConvTranspose3d)]
    depth = {64: 4, 128: 5}[s]
    assert len(ap_up) == len(lat_up) == depth
    assert {c.stride for c in ap_up} == {(2, 1, 1)} and {c.stride for c in lat_up} == {(1, 1, 2)}
    dec = [m for m in model.decoder.modules() if isinstance(m, nn.ConvTranspose3d)]
    assert [c.in_channels for c in dec] == [64, 64, 64, 64, 64, 32, 16]
    assert [c.out_channels for c in dec] == [64, 64, 64, 64, 32, 16, 1]
    assert [c.stride[0] for c in dec] == [1, 1, 1, 1, 2, 2, 1]
    assert [c.kernel_size[0] for c in dec] == [3, 3, 3, 3, 3, 3, 7]
    assert isinstance(model.decoder[-1], nn.Sequential) and len(model.decoder[-1]) == 1  # conv-only


def test_dropout_is_an_argument() -> None:
    assert {m.p for m in TwoDPermuteConcat(img_size=16).modules() if isinstance(m, nn.Dropout)} == {0.1}
    assert {
        m.p for m in TwoDPermuteConcat(img_size=16, dropout=0.3).modules() if isinstance(m, nn.Dropout)
    } == {0.3}
    assert TwoDPermuteConcat.input_family == "two_view"


@pytest.mark.parametrize("s", [0, 8, 48, 96, 100])
def test_rejects_bad_img_size(s: int) -> None:
    with pytest.raises(ValueError, match="power of two >= 16"):
        TwoDPermuteConcat(img_size=s)


def test_axis_alignment() -> None:
    """AP (I, R) lands on volume axes (I, R) and is extruded along P; LAT (P, I) on (P, I), extruded along R.

    Moving the output target along P must move only the LAT row centroid, along I the AP row and LAT column
    centroids, along R only the AP column centroid. A swapped extrusion or a transposed view fails this.
    """
    s = 64
    shifts = axis_moves(positive_probe(TwoDPermuteConcat(img_size=s)), s, min_shift=s / 16, still_tol=1e-3)
    assert shifts == EXPECTED_MOVES
