"""Reference baselines that any trained model must beat."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import torch

from xray3d.data.io import write_bytes_atomic

if TYPE_CHECKING:
    from xray3d.data.dataset import ManifestDataset

__all__ = ["mean_shape", "mean_shape_baseline"]

log = logging.getLogger(__name__)

_BASELINE_VERSION = 1


def mean_shape(train_masks: Iterable[torch.Tensor | np.ndarray], threshold: float = 0.5) -> np.ndarray:
    """The mean-shape baseline: voxel-wise mean of the training masks, thresholded.

    Streams the masks (a running integer count per voxel), so memory does not grow with their number.

    Args:
        train_masks: binary masks of one grid, each (s, s, s) or (1, s, s, s); values > 0.5 count as
            foreground.
        threshold: voxels whose training frequency is at least this are foreground.

    Returns:
        A boolean (s, s, s) array.
    """
    counts: np.ndarray | None = None
    n = 0
    for m in train_masks:
        if isinstance(m, torch.Tensor):
            m = m.detach().cpu().numpy()
        a = np.asarray(m).squeeze() > 0.5
        if counts is None:
            counts = np.zeros(a.shape, dtype=np.int32)
        elif a.shape != counts.shape:
            raise ValueError(f"training masks must share one grid, got shapes {counts.shape} and {a.shape}")
        counts += a
        n += 1
    if counts is None:
        raise ValueError("the mean-shape baseline needs at least one training mask")
    return counts / n >= threshold


def _baseline_key(dataset: ManifestDataset, threshold: float) -> str:
    ids = sorted((sid, dataset.fingerprint(i)) for i, sid in enumerate(dataset.sample_ids))
    desc = {
        "version": _BASELINE_VERSION,
        "anatomy": dataset.anatomy,
        "grid_size": dataset.grid_size,
        "spacing_mm": dataset.spacing_mm,
        "threshold": float(threshold),
        "samples": ids,
    }
    return hashlib.sha1(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:20]


def mean_shape_baseline(dataset: ManifestDataset, threshold: float = 0.5) -> np.ndarray:
    """The mean-shape baseline of a (training) dataset, streamed over its masks and cached on disk.

    The result is stored atomically as ``<cache_dir>/mean_shape/<key>.npy`` in the dataset's array cache
    (:attr:`ManifestDataset.cache_dir`), the key being a digest of anatomy, grid, spacing, threshold and
    the sorted sample ids with their source fingerprints: a second call (or another rank) reads the file,
    and any change of the samples computes a new one.

    Args:
        dataset: the samples to average (usually the training split).
        threshold: voxels whose training frequency is at least this are foreground.

    Returns:
        A boolean (s, s, s) array.
    """
    path = dataset.cache_dir / "mean_shape" / f"{_baseline_key(dataset, threshold)}.npy"
    if path.is_file():
        try:
            cached = np.load(path, allow_pickle=False)
            if cached.dtype == bool and cached.shape == (dataset.grid_size,) * 3:
                return cached
        except (OSError, ValueError) as exc:
            log.warning("mean-shape cache %s unreadable (%s); recomputing", path, exc)
    shape = mean_shape((dataset.mask_array(i) for i in range(len(dataset))), threshold)
    buf = io.BytesIO()
    np.save(buf, shape, allow_pickle=False)
    try:
        write_bytes_atomic(buf.getvalue(), path)
    except OSError as exc:
        log.warning("cannot cache the mean shape in %s (%s); it is recomputed next time", path, exc)
    return shape
