"""Checks that run before anything is built (model, loggers, W&B run), so a user error costs seconds."""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from xray3d.data.io import DataError

__all__ = ["check_data", "run_or_exit"]

log = logging.getLogger(__name__)


def check_data(cfg: DictConfig) -> None:
    """Fail now, with the commands that prepare it, when the configured dataset is not prepared.

    Raises:
        DataError: no ``manifest.csv`` in ``data.data_dir`` and no on-the-fly preparer (``data.prepare``).
    """
    data = cfg.get("data")
    if data is None or data.get("prepare") is not None:
        return
    manifest = Path(str(data.data_dir)) / "manifest.csv"
    if manifest.is_file():
        return
    hint = data.get("prepare_hint") or f"xray3d-prepare <dataset> --raw /path/to/raw --out {data.data_dir}"
    raise DataError(
        f"the dataset of this data config is not prepared: {manifest} does not exist.\n"
        f"Prepare it once with\n  {hint}\n"
        "(docs/datasets.md), or point data.data_dir at a prepared copy: data.data_dir=/path/to/dataset"
    )


def _only_hydra_files(run_dir: Path) -> bool:
    entries = list(run_dir.iterdir()) if run_dir.is_dir() else []
    return all(p.name == ".hydra" or p.suffix == ".log" for p in entries)


def run_or_exit(run: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run a pipeline; a :class:`DataError` ends it with its message (no traceback) and exit code 2,
    removing the run folder Hydra created when nothing but Hydra's own files is in it."""
    try:
        return run(cfg)
    except DataError as exc:
        run_dir = Path(str(cfg.paths.output_dir))
        if _only_hydra_files(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
