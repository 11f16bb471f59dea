"""Silence third-party messages that say nothing to an xray3d user (real warnings stay)."""

from __future__ import annotations

import logging
import warnings

__all__ = ["quiet_third_party"]

#: warning texts (regular expressions) that are noise in xray3d's pipelines, and why
_WARNINGS = (
    # torch.utils._pytree deprecation raised inside a dependency (not xray3d's code)
    r".*LeafSpec.*",
    # eval.py / trainer.test(ckpt_path=...) restores a checkpoint written by train.py's callbacks, which are
    # not (and need not be) the evaluation's
    r".*callbacks used to create the checkpoint need to be provided.*",
    # ModelCheckpoint of an evaluation points at a run folder other than the training's: expected, and the
    # "new" path it names does not exist
    r".*The dirpath has changed from.*",
)


class _DropTips(logging.Filter):
    """Lightning's advertisements for its cloud products (litlogger / litmodels)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "💡 Tip" not in record.getMessage()


def quiet_third_party() -> None:
    """Install the filters (idempotent)."""
    for pattern in _WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
