"""Structural probe of how a two-view network routes image axes to PIR volume axes.

The model is made a positive linear map (constant positive weights, zero biases, eval mode). With
all-ones inputs every ReLU is then active (and max-pooling picks a fixed pixel), so the input gradient of
an output region counts the weighted paths from each pixel to that region: a blob whose position depends
only on how the network routes image axes to volume axes, without the cancellation noise of random
signed weights.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# AP rows = I, AP cols = R; LAT rows = P, LAT cols = I.  Entry: (AP (row, col), LAT (row, col)) that move.
EXPECTED_MOVES = {"P": ((0, 0), (1, 0)), "I": ((1, 0), (0, 1)), "R": ((0, 1), (0, 0))}


def positive_probe(model: nn.Module) -> nn.Module:
    """Constant positive weights, zero biases, eval mode, parameters frozen (input gradients only)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)):
                m.weight.fill_(m.weight.shape[0] / m.weight.numel())
                if m.bias is not None:
                    m.bias.zero_()
    return model.requires_grad_(False).eval()


def input_grads(model: nn.Module, s: int, target: tuple[int, int, int]) -> tuple[Tensor, Tensor]:
    """|d(sum of the 3^3 output region at PIR ``target``) / d(input)| for the AP and LAT images."""
    ap = torch.ones(1, 1, s, s, requires_grad=True)
    lat = torch.ones(1, 1, s, s, requires_grad=True)
    p, i, r = target
    model(ap, lat)[0, 0, p - 1 : p + 2, i - 1 : i + 2, r - 1 : r + 2].sum().backward()
    return ap.grad[0, 0].abs(), lat.grad[0, 0].abs()


def centroid(g: Tensor) -> Tensor:
    """(row, column) centroid of ``g**2``."""
    w = g.double() ** 2
    w = w / w.sum()
    idx = torch.arange(g.shape[0], dtype=w.dtype)
    return torch.stack([(w.sum(1) * idx).sum(), (w.sum(0) * idx).sum()])


def axis_moves(model: nn.Module, s: int, min_shift: float, still_tol: float = 1e-2) -> dict[str, tuple]:
    """Move the output target by s/2 along P, I and R; report which AP/LAT (row, col) centroids follow.

    A component "follows" (1) when it shifts by more than ``min_shift`` pixels and "stays" (0) when it
    moves less than ``still_tol``; anything in between fails the calling test as ambiguous.
    """
    base = (s // 4, s // 4, s // 4)
    ap0, lat0 = (centroid(g) for g in input_grads(model, s, base))
    moves = {}
    for axis, name in enumerate("PIR"):
        target = list(base)
        target[axis] += s // 2
        ap, lat = (centroid(g) for g in input_grads(model, s, tuple(target)))
        flags = []
        for shift in (ap - ap0, lat - lat0):
            for c in shift.tolist():
                assert c > min_shift or abs(c) < still_tol, f"ambiguous centroid shift {c:.3f} along {name}"
            flags.append(tuple(int(c > min_shift) for c in shift.tolist()))
        moves[name] = tuple(flags)
    return moves
