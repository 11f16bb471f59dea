"""OneDConcat (spec §3.4): shapes, parameter counts, layer lists and argument checks.

The fully connected bottleneck mixes every pixel of both views into one 256-d code, so the model has no
spatial correspondence between image axes and volume axes by design: there is no axis test here.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xray3d.models.nets.oned_concat import OneDConcat

# spec §3.1: 40.62M at s=128, 38.99M at s=64; the exact counts pin the layer configuration.
PARAMS = {64: (38_994_561, 38.99e6), 128: (40_621_953, 40.62e6)}


@pytest.mark.parametrize("s", [16, 32, 64])
def test_output_shape(s: int) -> None:
    model = OneDConcat(img_size=s).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, s, s), torch.rand(2, 1, s, s))
    assert out.shape == (2, 1, s, s, s)


def test_trains_one_step() -> None:
    model = OneDConcat(img_size=32).train()
    model(torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("s", sorted(PARAMS))
def test_parameter_count(s: int) -> None:
    exact, spec = PARAMS[s]
    n = sum(p.numel() for p in OneDConcat(img_size=s).parameters())
    assert n == exact
    assert n == pytest.approx(spec, rel=0.05)


@pytest.mark.parametrize(
    ("s", "fused", "decoder_out"),
    [(128, 8192, [1024, 512, 256, 128, 64, 32, 1]), (64, 2048, [1024, 512, 256, 128, 64, 1])],
)
def test_layer_configuration(s: int, fused: int, decoder_out: list[int]) -> None:
    model = OneDConcat(img_size=s)
    enc = [m for m in model.ap_encoder.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in enc] == [32, 64, 128, 256, 512, 1024]
    assert {c.stride for c in enc} == {(2, 2)} and {c.kernel_size for c in enc} == {(3, 3)}
    assert model.bottleneck[0].in_features == fused and model.bottleneck[0].out_features == 256
    assert isinstance(model.bottleneck[1], nn.BatchNorm1d)
    dec = [m for m in model.decoder.modules() if isinstance(m, nn.ConvTranspose3d)]
    assert [c.out_channels for c in dec] == decoder_out
    assert dec[0].in_channels == 256
    assert len(model.decoder[-1]) == 1  # the last block is conv-only


def test_arguments() -> None:
    model = OneDConcat(img_size=16, dropout=0.2)
    assert {m.p for m in model.modules() if isinstance(m, nn.Dropout)} == {0.2}
    assert {m.p for m in OneDConcat(img_size=16).modules() if isinstance(m, nn.Dropout)} == {0.1}
    assert OneDConcat.input_family == "two_view"


@pytest.mark.parametrize("s", [0, 8, 48, 100])
def test_rejects_bad_img_size(s: int) -> None:
    with pytest.raises(ValueError, match="power of two >= 16"):
        OneDConcat(img_size=s)
