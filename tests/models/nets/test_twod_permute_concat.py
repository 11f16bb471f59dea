"""TwoDPermuteConcat (spec §3.3): shapes, parameter counts, argument checks and view-axis alignment."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from xray3d.models.nets.twod_permute_concat import TwoDPermuteConcat

# spec §3.1: 1.25M at s=128, 1.19M at s=64; the exact counts pin the layer configuration.
PARAMS = {64: (1_194_049, 1.19e6), 128: (1_249_537, 1.25e6)}


def _positive_probe(model: nn.Module) -> nn.Module:
    """Make ``model`` a positive linear map: constant positive weights, zero biases, eval mode.

    With all-ones inputs every ReLU is then active, so the input gradient of an output region counts the
    weighted paths from each pixel to that region: a smooth blob whose position depends only on how the
    network routes image axes to volume axes (no cancellation noise from random signed weights).
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)):
                m.weight.fill_(m.weight.shape[0] / m.weight.numel())
                if m.bias is not None:
                    m.bias.zero_()
    return model.requires_grad_(False).eval()  # gradients w.r.t. the inputs only


def _input_grads(model: nn.Module, s: int, target: tuple[int, int, int]) -> tuple[Tensor, Tensor]:
    """|d(sum of the 3^3 output region at PIR ``target``) / d(input)| for the AP and LAT images."""
    ap = torch.ones(1, 1, s, s, requires_grad=True)
    lat = torch.ones(1, 1, s, s, requires_grad=True)
    p, i, r = target
    model(ap, lat)[0, 0, p - 1 : p + 2, i - 1 : i + 2, r - 1 : r + 2].sum().backward()
    return ap.grad[0, 0].abs(), lat.grad[0, 0].abs()


def _centroid(g: Tensor) -> Tensor:
    """(row, column) centroid of ``g**2``."""
    w = g.double() ** 2
    w = w / w.sum()
    idx = torch.arange(g.shape[0], dtype=w.dtype)
    return torch.stack([(w.sum(1) * idx).sum(), (w.sum(0) * idx).sum()])


def _axis_shifts(model: nn.Module, s: int) -> dict[str, tuple[Tensor, Tensor]]:
    """For a move of the output target along P, I and R: the (row, col) shift of the AP and LAT centroids."""
    base = (s // 4, s // 4, s // 4)
    ap0, lat0 = (_centroid(g) for g in _input_grads(model, s, base))
    shifts = {}
    for axis, name in enumerate("PIR"):
        target = list(base)
        target[axis] += s // 2
        ap, lat = (_centroid(g) for g in _input_grads(model, s, tuple(target)))
        shifts[name] = (ap - ap0, lat - lat0)
    return shifts


# AP rows = I, AP cols = R; LAT rows = P, LAT cols = I.  Entry: (AP (row, col), LAT (row, col)) that move.
EXPECTED_MOVES = {"P": ((0, 0), (1, 0)), "I": ((1, 0), (0, 1)), "R": ((0, 1), (0, 0))}


def _moves(shifts: dict[str, tuple[Tensor, Tensor]], min_shift: float) -> dict[str, tuple]:
    """Which centroid components moved forward (1) or stayed put (0); anything else raises."""
    out = {}
    for name, (ap, lat) in shifts.items():
        flags = []
        for v in (ap, lat):
            for c in v.tolist():
                assert c > min_shift or abs(c) < 1e-3, (
                    f"ambiguous centroid shift {c:.3f} for a move along {name}"
                )
            flags.append(tuple(int(c > min_shift) for c in v.tolist()))
        out[name] = tuple(flags)
    return out


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
    shifts = _axis_shifts(_positive_probe(TwoDPermuteConcat(img_size=s)), s)
    assert _moves(shifts, min_shift=s / 16) == EXPECTED_MOVES
