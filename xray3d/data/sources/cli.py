"""Shared command-line plumbing of the dataset preparation commands."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from xray3d.data.io import DataError

if TYPE_CHECKING:
    from xray3d.data.sources.base import Preparer

__all__ = ["add_prepare_arguments", "common_options", "prepare_main", "run_prepare"]


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


def common_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`add_prepare_arguments`' options, for a ``prepare_*`` function."""
    return {
        "workers": args.workers,
        "force": args.force,
        "split_seed": args.split_seed,
        "split_lists": args.split_lists,
    }


def run_prepare(prepare: Callable[[], Path]) -> int:
    """Run a preparation, print the split counts, skips, duplicate scans, leaks and throughput.

    Returns:
        Exit code: 0 when samples exist and no leak was found, else 1.
    """
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
    groups = meta.get("duplicate_scans", [])
    if groups:
        print(f"duplicate scans: {len(groups)} groups ({'; '.join(', '.join(g) for g in groups)})")
    for err in meta.get("errors", []):
        print(f"error: {err['reason']}", file=sys.stderr)
    t = meta["timing"]
    print(f"{t['new_samples']} new samples in {t['seconds']:.1f} s: {t['samples_per_min']:.1f} samples/min")
    print(f"manifest: {path}")
    return 0 if len(df) and not meta.get("errors") else 1


def prepare_main(argv: list[str] | None, preparer: type[Preparer]) -> int:
    """The command-line entry point of a source: the common options, the source's own
    (:meth:`~xray3d.data.sources.base.Preparer.add_arguments`), then :func:`run_prepare`.

    Args:
        argv: command-line arguments (None: ``sys.argv``).
        preparer: the source's preparer class (its module docstring's first paragraph describes the command).

    Returns:
        The exit code of :func:`run_prepare`.
    """
    doc = sys.modules[preparer.__module__].__doc__ or preparer.name
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    add_prepare_arguments(parser, preparer.raw_help, preparer.out_example)
    preparer.add_arguments(parser)
    args = parser.parse_args(argv)
    options = {**preparer.options_from(args), **common_options(args)}
    return run_prepare(lambda: preparer(args.raw, args.out, **options).prepare())
