"""The W&B logger of ``conf/logger/wandb.yaml``."""

from __future__ import annotations

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger

__all__ = ["WandbLogger"]


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` without the deprecated ``anonymous`` setting it always passes to
    ``wandb.init`` (W&B prints "The anonymous setting has no effect" on every run otherwise)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._wandb_init.pop("anonymous", None)
