"""ReconstructionModule: one LightningModule for every architecture (``net(ap, lat) -> logits``)."""

from __future__ import annotations

import math
from collections.abc import Callable

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from xray3d.metrics.image import METRIC_KEYS, binary_metrics

__all__ = ["ReconstructionModule"]


class ReconstructionModule(L.LightningModule):
    """Train / evaluate a biplanar reconstruction network.

    Args:
        net: module called as ``net(ap, lat)``; ``ap``/``lat`` are ``(B, 1, s, s)``, the output is
            ``(B, 1, s, s, s)`` logits in PIR.
        loss: callable ``loss(logits, target)``, e.g. ``monai.losses.DiceLoss(sigmoid=True)``.
        optimizer: partial optimizer factory ``optimizer(params=...)``.
        scheduler: optional partial LR-scheduler factory ``scheduler(optimizer=...)``.
        threshold: probability above which a voxel is bone.
        nsd_tolerance_mm: tolerance of the normalised surface Dice.
        inputs: batch keys passed to ``net`` in order; ``("mask",)`` trains a mask autoencoder (the
            first stage of the TL-embedding model).
        input_noise_std: std of Gaussian noise added to the inputs during training only (the
            denoising autoencoder uses 0.1, i.e. variance 0.01, spec §3.6).

    Per-case evaluation rows of the last validation / test epoch are kept in ``self.case_rows[stage]``
    (sample id + :data:`~xray3d.metrics.image.METRIC_KEYS` + empty flags).
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., object] | None = None,
        threshold: float = 0.5,
        nsd_tolerance_mm: float = 1.5,
        inputs: tuple[str, ...] = ("ap", "lat"),
        input_noise_std: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"model.threshold must be in (0, 1), got {threshold}")
        self.save_hyperparameters(ignore=["net", "loss", "optimizer", "scheduler"], logger=False)
        self.net = net
        self.loss_fn = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.threshold = threshold
        self.nsd_tolerance_mm = nsd_tolerance_mm
        if not inputs:
            raise ValueError("model.inputs must name at least one batch key, e.g. [ap, lat]")
        if input_noise_std < 0:
            raise ValueError(f"model.input_noise_std must be >= 0, got {input_noise_std}")
        self.inputs = tuple(inputs)
        self.input_noise_std = float(input_noise_std)
        self.case_rows: dict[str, list[dict]] = {"val": [], "test": []}
        # set by MetricsReport(workers>0): the test cases' image metrics are computed in its background
        # processes, which fill case_rows["test"] before on_test_epoch_end logs them
        self.defer_test_metrics = False

    def forward(self, *inputs: Tensor) -> Tensor:
        """Logits ``(B, 1, s, s, s)``; by default ``forward(ap, lat)``."""
        return self.net(*inputs)

    def net_inputs(self, batch: dict, noisy: bool = False) -> list[Tensor]:
        """The tensors named by ``inputs``, with training noise when ``noisy``."""
        missing = [k for k in self.inputs if k not in batch]
        if missing:
            raise KeyError(f"batch has no {missing} (model.inputs={list(self.inputs)}; keys {sorted(batch)})")
        xs = [batch[k] for k in self.inputs]
        if noisy and self.input_noise_std > 0:
            xs = [x + torch.randn_like(x) * self.input_noise_std for x in xs]
        return xs

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        logits = self(*self.net_inputs(batch, noisy=True))
        loss = self.loss_fn(logits, batch["mask"])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(logits))
        return loss

    # ---------------------------------------------------------------- evaluation
    def predict_mask(self, batch: dict) -> tuple[Tensor, Tensor]:
        """Return ``(logits, binary mask)`` for a batch."""
        logits = self(*self.net_inputs(batch))
        return logits, (torch.sigmoid(logits) > self.threshold)

    def _eval_step(self, batch: dict, stage: str) -> dict:
        logits, pred = self.predict_mask(batch)
        loss = self.loss_fn(logits, batch["mask"])
        self.log(f"{stage}/loss", loss, on_epoch=True, batch_size=len(logits))
        if stage == "test" and self.defer_test_metrics:
            return {"logits": logits, "pred": pred}
        pred_np = pred.cpu().numpy()
        gt_np = batch["mask"].cpu().numpy() > 0.5
        for i in range(len(pred_np)):
            spacing = float(batch["spacing_mm"][i])
            row = {"sample_id": batch["sample_id"][i]}
            row.update(binary_metrics(pred_np[i, 0], gt_np[i, 0], spacing, self.nsd_tolerance_mm))
            self.case_rows[stage].append(row)
        return {"logits": logits, "pred": pred}

    def on_validation_epoch_start(self) -> None:
        self.case_rows["val"] = []

    def on_test_epoch_start(self) -> None:
        self.case_rows["test"] = []

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        return self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        return self._eval_step(batch, "test")

    def _log_epoch_metrics(self, stage: str) -> None:
        rows = self.case_rows[stage]
        if not rows:
            return
        for key in METRIC_KEYS:
            vals = np.array([r[key] for r in rows], dtype=float)
            finite = vals[np.isfinite(vals)]
            # Distances of empty predictions are inf: average the finite ones and count the rest.
            value = float(finite.mean()) if len(finite) else math.nan
            self.log(f"{stage}/{key}", value, prog_bar=key == "dice", sync_dist=True)
        self.log(f"{stage}/n_empty_pred", float(sum(bool(r["empty_pred"]) for r in rows)))

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        logits, pred = self.predict_mask(batch)
        return {"sample_id": batch["sample_id"], "prob": torch.sigmoid(logits), "pred": pred}

    def configure_optimizers(self):
        params = [p for p in self.net.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
