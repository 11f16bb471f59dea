"""Training sampler and random streams that stay correct under DDP (one process per GPU, many nodes).

* :class:`EpochSampler` draws ``num_samples`` training samples per epoch *in total*, split over the
  ranks (each rank draws its ``ceil(num_samples / world_size)``), with replacement when the epoch is
  longer than the dataset (as a ``RandomSampler(replacement=True, num_samples=...)`` does on one
  process). It is a :class:`~torch.utils.data.DistributedSampler`, so Lightning leaves it alone instead of
  swapping it for a plain ``DistributedSampler`` that would forget ``num_samples``; Lightning calls its
  ``set_epoch`` every epoch.
* :func:`rank_seed` derives the seed of one rank's (and one DataLoader worker's) random stream from the
  run seed, so the augmentations of different ranks differ and each is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DistributedSampler

__all__ = ["EpochSampler", "rank_seed"]


def rank_seed(seed: int, rank: int, worker: int = 0, stream: int = 0) -> int:
    """A 63-bit seed for ``(run seed, global rank, DataLoader worker, stream)``, distinct per tuple.

    Uses NumPy's ``SeedSequence`` (hash-mixed), so neighbouring ranks do not get correlated streams.
    """
    entropy = [int(seed) & 0xFFFFFFFF, int(rank), int(worker), int(stream)]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


class EpochSampler(DistributedSampler):
    """Random indices of one epoch for one rank.

    Args:
        dataset_size: samples in the dataset.
        num_samples: samples per epoch over all ranks (``None`` = one pass over the dataset).
        num_replicas: world size (defaults to the initialised process group's, else 1).
        rank: global rank (defaults to the process group's, else 0).
        seed: run seed; the draw of epoch ``e`` on rank ``r`` depends only on ``(seed, r, e)``.

    Without replacement (epoch no longer than the dataset) every rank takes its own slice of one shared
    permutation, so the ranks see disjoint samples; with replacement each rank draws independently.
    """

    def __init__(
        self,
        dataset_size: int,
        num_samples: int | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
    ) -> None:
        if dataset_size < 1:
            raise ValueError("EpochSampler needs a non-empty dataset")
        if num_replicas is None:
            dist = torch.distributed
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            dist = torch.distributed
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        # DistributedSampler.__init__ wants a dataset; only its length matters here
        super().__init__(range(dataset_size), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.dataset_size = int(dataset_size)
        self.total_samples = int(num_samples or dataset_size)
        if self.total_samples < 1:
            raise ValueError(f"data.train_samples_per_epoch must be >= 1, got {num_samples}")
        self.replacement = self.total_samples > self.dataset_size
        self.num_samples = math.ceil(self.total_samples / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def __iter__(self) -> Iterator[int]:
        if self.replacement:
            g = torch.Generator().manual_seed(rank_seed(self.seed, self.rank, stream=1_000_000 + self.epoch))
            return iter(torch.randint(self.dataset_size, (self.num_samples,), generator=g).tolist())
        g = torch.Generator().manual_seed(rank_seed(self.seed, 0, stream=1_000_000 + self.epoch))
        perm = torch.randperm(self.dataset_size, generator=g).tolist()
        perm = (perm * math.ceil(self.total_size / len(perm)))[: self.total_size]  # pad by wrapping
        return iter(perm[self.rank : self.total_size : self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples
