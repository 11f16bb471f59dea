"""The mean-shape baseline: streaming, and cached per set of training samples."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from xray3d.baselines import mean_shape, mean_shape_baseline
from xray3d.data.dataset import ManifestDataset


def test_mean_shape_majority_vote():
    a = np.zeros((4, 4, 4))
    b = np.zeros((4, 4, 4))
    c = np.zeros((4, 4, 4))
    a[0, 0, 0] = b[0, 0, 0] = 1  # 2 of 3 -> kept
    c[1, 1, 1] = 1  # 1 of 3 -> dropped
    m = mean_shape([a, b, c])
    assert m[0, 0, 0] and not m[1, 1, 1] and m.sum() == 1


def test_mean_shape_errors():
    with pytest.raises(ValueError, match="at least one"):
        mean_shape([])
    with pytest.raises(ValueError, match="one grid"):
        mean_shape([np.zeros((2, 2, 2)), np.zeros((3, 3, 3))])


def _list_based(masks, threshold):
    """The former definition: mean of all masks held in one list."""
    return np.mean([np.asarray(m, dtype=np.float32).squeeze() for m in masks], axis=0) >= threshold


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_streaming_mean_shape_equals_the_list_based_definition(threshold):
    rng = np.random.default_rng(0)
    masks = [rng.random((6, 6, 6)) < p for p in np.linspace(0.2, 0.8, 10)]
    expected = _list_based(masks, threshold)
    inputs = (torch.from_numpy(m.astype(np.float32))[None] for m in masks)  # a generator of (1, s, s, s)
    assert np.array_equal(mean_shape(inputs, threshold), expected)


@pytest.fixture
def train_ds(embedded_small, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(embedded_small, root, ignore=shutil.ignore_patterns(".array_cache", ".clinical_cache"))
    return ManifestDataset(root, root / "manifest.csv", ["train"], "vertebra", 1.5, 64)


def _no_reads(index):
    raise AssertionError("the cached baseline must not read masks")


def test_baseline_is_cached_reused_and_invalidated(train_ds, monkeypatch):
    expected = _list_based([train_ds[i]["mask"] for i in range(len(train_ds))], 0.5)
    first = mean_shape_baseline(train_ds)
    assert first.dtype == bool and np.array_equal(first, expected)
    assert len(list((train_ds.cache_dir / "mean_shape").glob("*.npy"))) == 1
    # another rank / a later run: same samples -> the cached file, no mask read
    again = ManifestDataset(train_ds.root, train_ds.root / "manifest.csv", ["train"], "vertebra", 1.5, 64)
    monkeypatch.setattr(again, "mask_array", _no_reads)
    assert np.array_equal(mean_shape_baseline(again), first)
    # other sample ids (train + val) or another threshold -> recomputed
    more = ManifestDataset(
        train_ds.root, train_ds.root / "manifest.csv", ["train", "val"], "vertebra", 1.5, 64
    )
    monkeypatch.setattr(more, "mask_array", _no_reads)
    with pytest.raises(AssertionError, match="must not read"):
        mean_shape_baseline(more)
    with pytest.raises(AssertionError, match="must not read"):
        mean_shape_baseline(again, threshold=0.3)
    monkeypatch.undo()
    assert np.array_equal(mean_shape_baseline(more), _list_based([more[i]["mask"] for i in range(3)], 0.5))
    assert len(list((train_ds.cache_dir / "mean_shape").glob("*.npy"))) == 2
