"""Subject-level splits: the reference protocol (spec §2.5) and import of reference split lists."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from xray3d.data.io import DataError
from xray3d.data.splits import load_split_lists, reference_split, shuffle_split


@pytest.mark.parametrize(
    "n, counts",
    # spec §2.5 subject counts (train/val/test): femur 335/60/70, hip 321/57/67, rib 346/62/73
    [(465, (335, 60, 70)), (445, (321, 57, 67)), (481, (346, 62, 73))],
)
def test_reference_counts_and_disjoint(n, counts):
    subjects = [f"s{i:04d}" for i in range(n)]
    split = reference_split(subjects)
    assert set(split) == set(subjects)
    got = tuple(sum(v == s for v in split.values()) for s in ("train", "val", "test"))
    assert got == counts


def test_algorithm_matches_train_test_split():
    # scikit-learn's ShuffleSplit: n_test = ceil(0.15 n), perm = RandomState(seed).permutation(n),
    # test = perm[:n_test], train = perm[n_test:], both in permutation order.
    items = [f"s{i:04d}" for i in range(20)]
    perm = np.random.RandomState(12345).permutation(20)
    train, test = shuffle_split(items, 0.15, 12345)
    assert test == [items[i] for i in perm[:3]] and train == [items[i] for i in perm[3:]]
    split = reference_split(items)
    perm2 = np.random.RandomState(12345).permutation(17)
    assert {s for s, v in split.items() if v == "val"} == {train[i] for i in perm2[:3]}


def test_deterministic_and_seed_dependent():
    subjects = [f"s{i:04d}" for i in range(50)]
    assert reference_split(subjects) == reference_split(subjects)
    assert reference_split(subjects) != reference_split(subjects, seed=1)
    assert set(reference_split(["a", "b"]).values()) == {"train"}
    with pytest.raises(ValueError, match="unique"):
        reference_split(["a", "a", "b"])


def test_reference_csvs_with_absolute_paths(tmp_path):
    root = "/mnt/Enterprise/mahesh/TotalSegmentor/BIDS"
    for split, subjects in {"train": ["s0001", "s0002"], "val": ["s0003"], "test": ["s0004"]}.items():
        rows = []
        for s in subjects:
            for side in ("left", "right"):
                d = f"{root}/{s}/derivatives"
                xray = f"{d}/xray_from_ct/{s}_femur_{side}"
                rows.append([f"{xray}-ap.png", f"{xray}-lat.png", f"{d}/seg_roi/{s}_femur_{side}_msk.nii.gz"])
        df = pd.DataFrame(rows, columns=["ap", "lat", "seg"])
        df.to_csv(tmp_path / f"TotalSegmentor-femur-left-DRR-30k_{split}.csv")  # header ",ap,lat,seg"
    assert (tmp_path / "TotalSegmentor-femur-left-DRR-30k_train.csv").read_text().startswith(",ap,lat,seg")
    got = load_split_lists(tmp_path)
    assert got == {"s0001": "train", "s0002": "train", "s0003": "val", "s0004": "test"}


def test_json_and_csv_lists_and_overlap_is_rejected(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"train": ["s1"], "test": ["s2"]}))
    assert load_split_lists(tmp_path / "a.json") == {"s1": "train", "s2": "test"}
    (tmp_path / "b.json").write_text(json.dumps({"s1": "train", "s3": "val"}))
    assert load_split_lists(tmp_path / "b.json") == {"s1": "train", "s3": "val"}
    pd.DataFrame({"subject": ["s1", "s4"], "split": ["train", "test"]}).to_csv(
        tmp_path / "c.csv", index=False
    )
    assert load_split_lists(tmp_path / "c.csv") == {"s1": "train", "s4": "test"}
    with pytest.raises(DataError, match="s1 is in two splits"):
        (tmp_path / "d.json").write_text(json.dumps({"s1": "test"}))
        load_split_lists([tmp_path / "a.json", tmp_path / "d.json"])
    with pytest.raises(DataError, match="not found"):
        load_split_lists(tmp_path / "nope.csv")
