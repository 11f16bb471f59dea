"""Resume interrupted runs and skip finished ones (requeued SLURM jobs, re-run sweeps).

A run directory is *finished* when ``<run dir>/.finished.json`` exists: :func:`mark_finished` writes it
atomically at the end of a successful :func:`xray3d.pipeline.train.run` with the run's metrics and a digest
of its config. :func:`prepare_run`, called at the start of ``run``, then

* returns the stored metrics when the run already finished with the same config (a re-run sweep skips it;
  ``rerun_finished=true`` trains again from scratch);
* otherwise sets ``cfg.ckpt_path`` to ``<run dir>/checkpoints/last.ckpt`` when it exists and ``ckpt_path``
  is null and ``auto_resume`` is true (a requeued job continues where it stopped).

Nothing here writes at the start of a run, so every DDP rank takes the same decision.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from xray3d.data.io import write_json_atomic

__all__ = [
    "FINISHED_FILE",
    "is_finished",
    "last_checkpoint",
    "mark_finished",
    "prepare_run",
    "read_finished",
    "resolve_resume",
    "run_digest",
]

log = logging.getLogger(__name__)

FINISHED_FILE = ".finished.json"
# keys that say how a run is started, not what it trains: left out of the digest
_START_KEYS = ("ckpt_path", "auto_resume", "rerun_finished")


def run_digest(cfg: DictConfig) -> str:
    """Short SHA-1 of the unresolved config without paths, Hydra settings and the start keys."""
    keep = {k: v for k, v in cfg.items() if k not in ("paths", "hydra", *_START_KEYS)}
    return hashlib.sha1(OmegaConf.to_yaml(keep, resolve=False).encode()).hexdigest()[:12]


def last_checkpoint(output_dir: str | Path) -> Path:
    """Where a run writes its latest weights (the ``last_checkpoint`` callback)."""
    return Path(output_dir) / "checkpoints" / "last.ckpt"


def read_finished(output_dir: str | Path) -> dict | None:
    """The content of ``<output_dir>/.finished.json``, or None when missing or unreadable."""
    path = Path(output_dir) / FINISHED_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_finished(output_dir: str | Path) -> bool:
    """Whether the run in ``output_dir`` completed (``mark_finished`` was called)."""
    return read_finished(output_dir) is not None


@rank_zero_only
def mark_finished(output_dir: str | Path, metrics: dict[str, Any], digest: str | None = None) -> None:
    """Atomically write ``<output_dir>/.finished.json`` with the metrics (global rank 0 only)."""
    write_json_atomic(
        {
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config_digest": digest,
            "metrics": metrics,
        },
        Path(output_dir) / FINISHED_FILE,
    )


def resolve_resume(cfg: DictConfig) -> str | None:
    """The checkpoint to start from: ``cfg.ckpt_path`` when set, else the run dir's ``last.ckpt``.

    ``last.ckpt`` is used only when ``cfg.auto_resume`` (default true) and the file exists.
    """
    if cfg.get("ckpt_path"):
        return str(cfg.ckpt_path)
    last = last_checkpoint(cfg.paths.output_dir)
    if cfg.get("auto_resume", True) and last.is_file():
        return str(last)
    return None


def prepare_run(cfg: DictConfig) -> dict | None:
    """Return a finished run's stored metrics, else None after setting ``cfg.ckpt_path`` to resume it."""
    output_dir = cfg.paths.output_dir
    done = read_finished(output_dir)
    marker = Path(output_dir) / FINISHED_FILE
    last = last_checkpoint(output_dir)
    if done is not None:
        digest = run_digest(cfg)
        if cfg.get("rerun_finished", False):
            # a rerun that was itself interrupted has a last.ckpt newer than the old marker
            if last.is_file() and last.stat().st_mtime > marker.stat().st_mtime:
                log.info("rerun_finished: resuming the rerun in %s", output_dir)
            else:
                log.info("rerun_finished: training %s again from scratch", output_dir)
                return None
        elif done.get("config_digest") in (None, digest):
            log.info(
                "run %s already finished at %s: skipping it (rerun_finished=true trains it again)",
                output_dir,
                done.get("finished_at"),
            )
            return dict(done.get("metrics") or {})
        else:
            log.warning(
                "run %s finished with another config (digest %s, now %s): not skipping it; resuming from "
                "its last checkpoint (rerun_finished=true trains from scratch)",
                output_dir,
                done.get("config_digest"),
                digest,
            )
    ckpt = resolve_resume(cfg)
    if ckpt and not cfg.get("ckpt_path"):
        log.info("auto_resume: resuming %s from %s", output_dir, ckpt)
        with open_dict(cfg):
            cfg.ckpt_path = ckpt
    return None
