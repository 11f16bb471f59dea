"""Training sampler and per-rank random streams under DDP."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DistributedSampler

from xray3d.data.sampling import EpochSampler, rank_seed


def test_epoch_sampler_splits_the_epoch_over_the_ranks_with_replacement():
    samplers = [EpochSampler(13, 100, num_replicas=4, rank=r, seed=1) for r in range(4)]
    assert all(isinstance(s, DistributedSampler) for s in samplers)  # Lightning keeps it as it is
    draws = [list(s) for s in samplers]
    assert [len(d) for d in draws] == [25] * 4 and all(0 <= i < 13 for d in draws for i in d)
    assert len({tuple(d) for d in draws}) == 4  # a different draw per rank
    assert draws[0] == list(EpochSampler(13, 100, num_replicas=4, rank=0, seed=1))  # reproducible
    samplers[0].set_epoch(1)
    assert list(samplers[0]) != draws[0]  # and a new one every epoch


def test_epoch_sampler_without_replacement_gives_disjoint_shards():
    draws = [list(EpochSampler(10, 10, num_replicas=2, rank=r, seed=3)) for r in range(2)]
    assert sorted(draws[0] + draws[1]) == list(range(10))
    one = EpochSampler(10, None, num_replicas=1, rank=0, seed=3)
    assert sorted(one) == list(range(10)) and len(one) == 10


def test_epoch_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rank"):
        EpochSampler(5, 5, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="non-empty"):
        EpochSampler(0, 5, num_replicas=1, rank=0)


def test_rank_seeds_differ_and_repeat():
    seeds = {rank_seed(12345, r, w) for r in range(8) for w in range(4)}
    assert len(seeds) == 32 and rank_seed(12345, 3, 1) == rank_seed(12345, 3, 1)
    assert all(0 <= s < 2**63 for s in seeds)


def test_augmentation_stream_differs_per_rank(compose_train):
    """The datamodule's training draws (pose, gamma, noise) come from a (seed, rank) generator."""
    import hydra

    cfg = compose_train()
    views = []
    for rank in (0, 1, 0):
        dm = hydra.utils.instantiate(cfg.data)
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2, training=True)
        batch = {"ct": torch.full((1, 1, 64, 64, 64), 400.0)}
        batch["ct"][:, :, 20:40, 20:40, 20:40] = 1200.0
        views.append(dm.render(batch, augment=True)["ap"])
    assert not torch.equal(views[0], views[1])  # rank 1 draws other augmentations
    assert torch.equal(views[0], views[2])  # rank 0 draws the same ones again
