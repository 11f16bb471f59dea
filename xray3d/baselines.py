"""Reference baselines that any trained model must beat."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

__all__ = ["mean_shape"]


def mean_shape(train_masks: Iterable[torch.Tensor | np.ndarray], threshold: float = 0.5) -> np.ndarray:
    """The mean-shape baseline: voxel-wise mean of the training masks, thresholded.

    Args:
        train_masks: binary masks of one grid, each (s, s, s) or (1, s, s, s).
        threshold: voxels whose training frequency exceeds this are foreground.

    Returns:
        A boolean (s, s, s) array.
    """
    arrays = [np.asarray(m, dtype=np.float32).squeeze() for m in train_masks]
    if not arrays:
        raise ValueError("the mean-shape baseline needs at least one training mask")
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"training masks must share one grid, got shapes {sorted(shapes)}")
    return np.mean(arrays, axis=0) >= threshold
