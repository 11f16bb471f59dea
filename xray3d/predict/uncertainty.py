"""Monte Carlo dropout and test-time pose jitter: mean probability, voxel uncertainty, per-case score."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "dropout_layers",
    "mc_dropout",
    "predictive_entropy_bits",
    "uncertainty_score",
    "rotate_views",
]


def dropout_layers(net: nn.Module) -> list[nn.Module]:
    """Every dropout layer of ``net`` (``nn.Dropout``, ``Dropout1d/2d/3d``, alpha dropout)."""
    return [m for m in net.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]


@contextmanager
def mc_dropout(net: nn.Module) -> Iterator[int]:
    """Put only the dropout layers of ``net`` in training mode (batch norm etc. stay in eval mode).

    Yields:
        The number of dropout layers switched on (0: the samples differ only by the pose jitter).
    """
    layers = [m for m in dropout_layers(net) if not m.training]
    for m in layers:
        m.train(True)
    try:
        yield len(dropout_layers(net))
    finally:
        for m in layers:
            m.train(False)


def predictive_entropy_bits(prob: Tensor, eps: float = 1e-6) -> Tensor:
    """Binary entropy (bits, 0 = certain, 1 = p = 0.5) of the mean probability, voxel by voxel."""
    p = prob.clamp(eps, 1 - eps)
    return -(p * torch.log2(p) + (1 - p) * torch.log2(1 - p))


def uncertainty_score(samples: Tensor, threshold: float = 0.5) -> Tensor:
    """Per-case score: 1 - mean Dice between each sample's mask and the mean prediction's mask.

    Args:
        samples: ``(N, B, 1, D, H, W)`` probabilities of the N Monte Carlo samples.
        threshold: bone threshold.

    Returns:
        ``(B,)`` in [0, 1]: 0 when every sample gives the same mask; higher when the samples disagree
        on where the bone is. A case whose samples are all empty scores 0 (flag it by its volume).
    """
    masks = samples > threshold
    mean_mask = samples.mean(0) > threshold
    dims = tuple(range(2, samples.ndim))
    inter = (masks & mean_mask.unsqueeze(0)).sum(dims).float()
    total = masks.sum(dims).float() + mean_mask.unsqueeze(0).sum(dims).float()
    dice = torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total))
    return 1.0 - dice.mean(0)


def rotate_views(img: Tensor, angle_deg: Tensor) -> Tensor:
    """Rotate ``(B, 1, s, s)`` views about their centres by ``angle_deg`` ``(B,)`` (bilinear, edges
    replicated): the in-plane pose jitter of a view, i.e. a rotation about its beam axis."""
    theta = angle_deg.to(img) * (math.pi / 180.0)
    cos, sin = torch.cos(theta), torch.sin(theta)
    zeros = torch.zeros_like(cos)
    mat = torch.stack([torch.stack([cos, -sin, zeros], -1), torch.stack([sin, cos, zeros], -1)], 1)
    grid = F.affine_grid(mat, list(img.shape), align_corners=True)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=True)
