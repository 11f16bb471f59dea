"""Subject-level train/val/test splits (reference protocol, spec §2.5) and import of reference split lists.

The reference (``B:scripts/generate_train_val_test_paths.py``) calls
``sklearn.model_selection.train_test_split(subjects, test_size=0.15, shuffle=True, random_state=12345)``
and then the same call on the train part for validation (0.15). :func:`shuffle_split` is that call
(scikit-learn's own function, not a re-implementation), and :func:`reference_split` chains the two calls.
Subjects known to be the same scan (``groups``, e.g. duplicates found by content) are split as one unit:
the first subject of each group stands for it in the draw. Without groups the result is exactly the
reference's draw for the same input order. The draw depends on that order (the reference's order is
that of its subject lists, which we do not have): to reproduce the published splits exactly, import the
reference's split CSVs with :func:`load_split_lists`. Both paths guarantee that no subject is in two
splits.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from xray3d.data.io import DataError

__all__ = ["shuffle_split", "reference_split", "load_split_lists", "check_disjoint", "SUBJECT_PATTERNS"]

SPLIT_NAMES = ("train", "val", "test")
# Subject id inside a reference path: ``<root>/<subject>/derivatives/...`` (spec §2.6), else a
# TotalSegmentator id ``s0123``.
SUBJECT_PATTERNS = (
    re.compile(r"([^/\\]+)[/\\]derivatives[/\\]"),
    re.compile(r"(?<![A-Za-z0-9])(s\d{4})(?!\d)"),
)


def shuffle_split(items: Sequence[str], test_size: float, seed: int) -> tuple[list[str], list[str]]:
    """One ``train_test_split(items, test_size=test_size, shuffle=True, random_state=seed)`` (scikit-learn).

    Args:
        items: subject ids, in the order the reference passes them.
        test_size: fraction in (0, 1) of items that go to the second part (``ceil(test_size * n)`` items).
        seed: ``random_state`` of the draw.

    Returns:
        ``(train, test)`` lists, each in scikit-learn's (permutation) order.

    Raises:
        ValueError: ``test_size`` outside (0, 1), or a part that would be empty.
    """
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    n = len(items)
    if n < 2 or math.ceil(test_size * n) >= n:
        raise ValueError(
            f"cannot split {n} subjects with test_size={test_size}: both parts need at least one subject"
        )
    train, test = train_test_split(list(items), test_size=test_size, shuffle=True, random_state=seed)
    return list(train), list(test)


def _group_members(subjects: list[str], groups: Mapping[str, str] | None) -> dict[str, list[str]]:
    """Representative (first subject of its group, in input order) -> all subjects of that group."""
    members: dict[str, list[str]] = {}
    rep_of_key: dict[str, str] = {}
    for s in subjects:
        key = groups.get(s) if groups is not None else None
        if key is None:
            members[s] = [s]
            continue
        rep = rep_of_key.setdefault(str(key), s)
        members.setdefault(rep, []).append(s)
    return members


def reference_split(
    subjects: Iterable[str],
    test_size: float = 0.15,
    val_size: float = 0.15,
    seed: int = 12345,
    groups: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Split subjects into train/val/test like the reference (test first, then val out of the rest).

    Args:
        subjects: unique subject ids (their order changes the draw; pass them sorted for a stable result).
        test_size: fraction of all subjects (of all groups, with ``groups``) in test.
        val_size: fraction of the non-test subjects (groups) in val.
        seed: random state of both draws.
        groups: subject id -> group key; subjects sharing a key (e.g. the same scan under two names) land
            in the same split. Subjects not in the mapping are groups of their own. The draw is made over
            the first subject of each group, so without groups, or with only single-subject groups, the
            result is exactly the reference's.

    Returns:
        Mapping subject id -> ``"train"`` / ``"val"`` / ``"test"``. With fewer than 3 subjects (groups)
        every subject goes to train (nothing to evaluate on, but nothing leaks either).

    Raises:
        ValueError: duplicate subject ids.
    """
    subjects = list(subjects)
    if len(set(subjects)) != len(subjects):
        dupes = sorted({s for s in subjects if subjects.count(s) > 1})
        raise ValueError(f"subject ids must be unique; repeated: {', '.join(map(str, dupes[:5]))}")
    members = _group_members(subjects, groups)
    reps = list(members)
    if len(reps) < 3:
        return dict.fromkeys(subjects, "train")
    rest, test = shuffle_split(reps, test_size, seed)
    if len(rest) < 2:
        train, val = rest, []
    else:
        train, val = shuffle_split(rest, val_size, seed)
    parts = {
        name: [s for rep in part for s in members[rep]]
        for name, part in (("train", train), ("val", val), ("test", test))
    }
    check_disjoint(parts)
    return {s: name for name, part in parts.items() for s in part}


def check_disjoint(parts: dict[str, Iterable[str]]) -> None:
    """Raise :class:`DataError` when a subject appears in two splits."""
    seen: dict[str, str] = {}
    for split, subjects in parts.items():
        for s in subjects:
            if seen.get(s, split) != split:
                raise DataError(f"subject {s} is in two splits ({seen[s]} and {split}); fix the split lists")
            seen[s] = split


def _subject_from_path(text: str) -> str | None:
    for pat in SUBJECT_PATTERNS:
        m = pat.search(str(text))
        if m:
            return m.group(1)
    return None


def _split_from_name(path: Path) -> str:
    stem = path.name.lower()
    for split in SPLIT_NAMES:
        if re.search(rf"(^|[_\-.]){split}([_\-.]|$)", stem):
            return split
    raise DataError(f"cannot tell the split of {path} from its name (expected _train/_val/_test in it)")


def _read_one(path: Path) -> dict[str, list[str]]:
    if not path.is_file():
        raise DataError(f"split list not found: {path}")
    if path.suffix.lower() == ".json":
        try:
            obj = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"split list {path} is not valid JSON ({exc})") from exc
        if not isinstance(obj, dict):
            raise DataError(f"split list {path} must hold a JSON object")
        if set(obj) <= set(SPLIT_NAMES) and all(isinstance(v, list) for v in obj.values()):
            return {k: [str(s) for s in v] for k, v in obj.items()}  # {split: [subjects]}
        parts: dict[str, list[str]] = {}
        for subject, split in obj.items():  # {subject: split}
            parts.setdefault(str(split), []).append(str(subject))
        return parts
    try:
        df = pd.read_csv(path, dtype=str)
    except Exception as exc:
        raise DataError(f"split list {path} cannot be read as CSV ({exc})") from exc
    cols = {c.lower().strip(): c for c in df.columns}
    if "subject" in cols and "split" in cols:  # our own format: subject,split
        parts = {}
        for subject, split in zip(df[cols["subject"]], df[cols["split"]], strict=True):
            parts.setdefault(str(split).strip(), []).append(str(subject).strip())
        return parts
    path_cols = [cols[c] for c in ("seg", "ap", "lat") if c in cols]
    if not path_cols:
        raise DataError(f"split list {path}: expected columns subject,split or the reference's ',ap,lat,seg'")
    split = _split_from_name(path)
    subjects = []
    for i, value in enumerate(df[path_cols[0]]):
        subject = _subject_from_path(value)
        if subject is None:
            raise DataError(f"split list {path}, row {i + 1}: no subject id in {value!r}")
        subjects.append(subject)
    return {split: list(dict.fromkeys(subjects))}


def load_split_lists(path: str | Path | Sequence[str | Path]) -> dict[str, str]:
    """Read subject -> split assignments from our lists or the reference's split CSVs.

    Accepted inputs: a JSON ``{subject: split}`` or ``{split: [subjects]}``; a CSV with columns
    ``subject,split``; the reference's per-split CSVs (header ``,ap,lat,seg``, absolute or relative paths
    with the subject id in them, the split in the file name, e.g. ``..._train.csv``); a directory
    (every ``*.csv`` / ``*.json`` in it) or a list of any of these.

    Returns:
        Mapping subject id -> split name.

    Raises:
        DataError: unreadable list, unknown layout, or a subject in two splits.
    """
    if isinstance(path, (str, Path)):
        p = Path(path)
        files = sorted([*p.glob("*.csv"), *p.glob("*.json")]) if p.is_dir() else [p]
    else:
        files = [Path(x) for x in path]
    if not files:
        raise DataError(f"no split list (*.csv, *.json) found in {path}")
    merged: dict[str, list[str]] = {}
    for f in files:
        for split, subjects in _read_one(f).items():
            merged.setdefault(split, []).extend(subjects)
    check_disjoint(merged)
    return {s: split for split, subjects in merged.items() for s in subjects}
