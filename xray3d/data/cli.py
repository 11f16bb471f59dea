"""Shared command-line plumbing of the dataset preparation commands."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from xray3d.data.io import DataError

__all__ = ["add_prepare_arguments", "run_prepare"]


def add_prepare_arguments(parser: argparse.ArgumentParser, raw_help: str, out_example: str) -> None:
    """Options every preparation command has: raw and output folders, workers, force, split seed and
    imported split lists.

    Args:
        parser: the command's parser.
        raw_help: what ``--raw`` must point at.
        out_example: an example output folder for ``--out``'s help.
    """
    parser.add_argument("--raw", required=True, help=raw_help)
    parser.add_argument("--out", required=True, help=f"output cache directory, e.g. {out_example}")
    parser.add_argument("--workers", type=int, default=1, help="worker processes [default: 1]")
    parser.add_argument("--force", action="store_true", help="redo every sample")
    parser.add_argument("--split-seed", type=int, default=12345, help="split random state [default: 12345]")
    parser.add_argument("--split-lists", default=None, help="import the reference split CSVs/JSON instead")


def run_prepare(prepare: Callable[[], Path]) -> int:
    """Run a preparation, print the split counts, skips and throughput; exit code 0 if any sample exists."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = prepare()
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    meta = json.loads((path.parent / "manifest.json").read_text())
    df = pd.read_csv(path)
    print(df.groupby("split").size().to_string() if len(df) else "no sample prepared")
    print(f"skipped: {len(meta['skipped'])} (see {path.parent / 'report.csv'})")
    t = meta["timing"]
    print(f"{t['new_samples']} new samples in {t['seconds']:.1f} s: {t['samples_per_min']:.1f} samples/min")
    print(f"manifest: {path}")
    return 0 if len(df) else 1
