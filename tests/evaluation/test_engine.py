"""Evaluation engine: collection across ranks (a real 2-process gloo group), each case once, in order."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from xray3d.evaluation.engine import gather_cases, metric_means


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, n_cases: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        # what a DistributedSampler (shuffle=False) hands this rank: r, r+W, ..., padded by wrapping around
        total = -(-n_cases // world) * world
        indices = (list(range(n_cases)) * 2)[:total][rank:total:world]
        rows = [{"sample_id": f"case{i}", "dice": i / 10, "empty_pred": False} for i in indices]
        gathered, extras = gather_cases(rows, {"hits": rank + 1})
        out[rank] = ([r["sample_id"] for r in gathered], extras)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(("world", "n_cases"), [(2, 3), (3, 7), (2, 1)])
def test_gather_cases_across_ranks_keeps_each_case_once_in_dataset_order(world, n_cases):
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(world, _free_port(), n_cases, out), nprocs=world, join=True)
    expected = [f"case{i}" for i in range(n_cases)]
    for rank in range(world):  # every rank holds the whole list (identical logged means)
        ids, extras = out[rank]
        assert ids == expected
        assert [e["hits"] for e in extras] == list(range(1, world + 1))


def test_gather_cases_on_one_process_drops_repeats():
    rows = [{"sample_id": "a", "dice": 1.0}, {"sample_id": "b", "dice": 0.5}, {"sample_id": "a", "dice": 1.0}]
    gathered, extras = gather_cases(rows)
    assert [r["sample_id"] for r in gathered] == ["a", "b"] and extras == [{}]
    assert not torch.distributed.is_initialized()


def test_metric_means_leave_out_infinite_distances():
    rows = [
        {"dice": 0.5, "hd95_mm": 2.0, "asd_mm": 1.0, "nsd": 0.5, "empty_pred": False},
        {"dice": 0.0, "hd95_mm": float("inf"), "asd_mm": float("inf"), "nsd": 0.0, "empty_pred": True},
    ]
    means = metric_means(rows)
    assert means["dice"] == 0.25 and means["hd95_mm"] == 2.0 and means["n_empty_pred"] == 1.0
