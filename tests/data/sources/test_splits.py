"""Subject-level splits: the reference protocol (spec §2.5) and import of reference split lists."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pandas as pd
import pytest

from xray3d.data.io import DataError
from xray3d.data.sources.splits import load_split_lists, reference_split, shuffle_split


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


def _previous_rule(items: list[str], test_size: float, seed: int) -> tuple[list[str], list[str]]:
    """The numpy re-implementation that prepared the existing datasets (before scikit-learn was used)."""
    n_test = math.ceil(test_size * len(items))
    perm = np.random.RandomState(seed).permutation(len(items))
    return [items[i] for i in perm[n_test:]], [items[i] for i in perm[:n_test]]


def _previous_reference_split(subjects: list[str], seed: int) -> dict[str, str]:
    if len(subjects) < 3:
        return dict.fromkeys(subjects, "train")
    rest, test = _previous_rule(subjects, 0.15, seed)
    train, val = _previous_rule(rest, 0.15, seed) if len(rest) >= 2 else (rest, [])
    return {**dict.fromkeys(train, "train"), **dict.fromkeys(val, "val"), **dict.fromkeys(test, "test")}


def test_scikit_learn_equals_the_previous_rule_over_seeds_and_sizes():
    """Existing prepared datasets keep their splits: scikit-learn's draw is the old numpy rule's."""
    rng = random.Random(0)
    sizes = [*range(2, 60), 100, 158, 445, 465, 481, 1204]
    for n in sizes:
        items = [f"sub-{rng.randrange(10**6):06d}-{i}" for i in range(n)]  # unsorted, arbitrary names
        for seed in [0, 1, 7, 42, 12345, 2**31 - 1, *rng.sample(range(10**6), 6)]:
            for test_size in (0.15, 0.2, 0.3, 0.5):
                if math.ceil(test_size * n) >= n:
                    with pytest.raises(ValueError, match="both parts need at least one subject"):
                        shuffle_split(items, test_size, seed)
                    continue
                assert shuffle_split(items, test_size, seed) == _previous_rule(items, test_size, seed)
            if n >= 3:
                assert reference_split(items, seed=seed) == _previous_reference_split(items, seed)


def test_split_lists_from_earlier_preparations_stay_valid(tmp_path):
    """A manifest.csv written with the old rule (several rows per subject) imports to today's split."""
    subjects = [f"s{i:04d}" for i in range(0, 300, 3)]
    old = _previous_reference_split(subjects, 12345)
    rows = [
        {"sample_id": f"{s}_{side}", "subject": s, "split": old[s]}
        for s in subjects
        for side in ("left", "right")
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    assert load_split_lists(tmp_path / "manifest.csv") == old == reference_split(subjects)


def test_groups_stay_together_and_nothing_is_lost():
    subjects = [f"s{i:04d}" for i in range(60)]
    # identity: no groups, an empty mapping and single-subject groups all give today's split
    plain = reference_split(subjects)
    assert reference_split(subjects, groups={}) == plain
    assert reference_split(subjects, groups={s: f"scan-{s}" for s in subjects}) == plain
    rng = random.Random(3)
    for seed in range(60):
        # random duplicate groups of 2-4 subjects (names not adjacent), the rest ungrouped
        shuffled = rng.sample(subjects, len(subjects))
        groups: dict[str, str] = {}
        pos = 0
        while pos < 30:
            k = rng.randint(2, 4)
            for s in shuffled[pos : pos + k]:
                groups[s] = f"hash{pos}"
            pos += k
        split = reference_split(subjects, seed=seed, groups=groups)
        assert sorted(split) == subjects  # every subject once, none invented
        assert set(split.values()) == {"train", "val", "test"}
        by_group: dict[str, set[str]] = {}
        for s, key in groups.items():
            by_group.setdefault(key, set()).add(split[s])
        assert all(len(v) == 1 for v in by_group.values()), by_group
    # the draw is made over groups: 3 groups are enough for a test split, 2 are not
    two = {"a": "x", "b": "x", "c": "y", "d": "y"}
    assert set(reference_split(list(two), groups=two).values()) == {"train"}
    three = {**two, "e": "z"}
    assert set(reference_split(list(three), groups=three).values()) >= {"train", "test"}


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
