"""ReconstructionModule: one LightningModule for every architecture (``net(ap, lat) -> logits``)."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from torch import Tensor, nn

from xray3d.evaluation.engine import CaseEvaluator, gather_cases, metric_means
from xray3d.evaluation.postprocess import POSTPROCESS_STEPS, check_postprocess, choose_postprocess
from xray3d.metrics.image import METRIC_KEYS

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
        compile: wrap the network in ``torch.compile`` when training / evaluation starts
            (``model.compile=true``).
        postprocess: post-processing of the predicted masks (:mod:`~xray3d.evaluation.postprocess`):
            ``auto`` (default) scores every step on the validation cases at each validation and keeps the
            best (``none`` unless a step improves the mean validation Dice), stored in the checkpoint;
            or a fixed ``none`` / ``largest_component`` / ``largest_component_fill``. The choice is applied
            at test and by ``xray3d-predict``; test rows carry ``dice_raw``, the Dice without it.

    Every validation and test case is evaluated by the evaluation engine
    (:class:`~xray3d.evaluation.engine.CaseEvaluator`; clinical parameters too when
    :meth:`configure_evaluation` asked for them). At the end of the epoch the rows of all DDP ranks are
    gathered, each case once, into ``self.case_rows[stage]`` on every rank, and their means logged, so
    the logged metrics equal a single-process evaluation.
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
        compile: bool = False,
        postprocess: str = "auto",
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
        self.compile = bool(compile)
        self._compiled = False
        self.postprocess = check_postprocess(postprocess, allow_auto=True)
        #: the post-processing applied at test / predict (chosen on validation when ``postprocess=auto``)
        self.postprocess_choice = "none" if postprocess == "auto" else postprocess
        self.case_rows: dict[str, list[dict]] = {"val": [], "test": []}
        self.eval_stats: dict[str, dict] = {}
        self._eval_options: dict[str, dict] = {"val": {}, "test": {}}
        self._evaluators: dict[str, CaseEvaluator] = {}
        #: Monte Carlo settings of predict_step (configure_prediction); by default one plain forward pass
        self._predict_options: dict = {"mc_samples": 1, "pose_jitter_deg": 0.0, "seed": 0}

    def configure_evaluation(
        self,
        stage: str,
        measure: Callable[..., dict] | None = None,
        gt_measure: Callable[..., dict] | None = None,
        workers: int = 0,
    ) -> None:
        """Set how the cases of ``stage`` ("val" / "test") are evaluated (the report callback calls this in
        its ``setup``): clinical ``measure`` and its ground-truth cache, background ``workers``."""
        if stage not in self._eval_options:
            raise ValueError(f"stage must be 'val' or 'test', got {stage!r}")
        if workers < 0:
            raise ValueError(f"evaluation workers must be >= 0, got {workers}")
        self._eval_options[stage] = {"measure": measure, "gt_measure": gt_measure, "workers": int(workers)}

    def setup(self, stage: str) -> None:
        """Before fitting, let the network refuse (``net.check_trainable()``); compile it once when
        ``compile`` is set.

        ``nn.Module.compile`` compiles in place, so checkpoint keys stay those of the plain network and a
        checkpoint trained with ``model.compile=true`` loads without it (and vice versa).
        """
        check = getattr(self.net, "check_trainable", None)
        if stage == "fit" and callable(check):
            check()  # e.g. the TL-embedding predictor refuses to train without its stage-1 decoder
        if self.compile and not self._compiled:
            self.net.compile()
            self._compiled = True

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
        interval = getattr(self.trainer, "log_every_n_steps", 1) if self._trainer is not None else 1
        # a finite-loss check reads the loss on the host: once per logging interval, not every step
        if self.global_step % max(1, interval) == 0 and not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at step {self.global_step}")
        n = len(logits)
        # per step: this rank's loss (no collective); per epoch: the mean over all ranks
        self.log("train/loss_step", loss, on_step=True, on_epoch=False, batch_size=n)
        self.log(
            "train/loss_epoch",
            loss,
            on_step=False,
            on_epoch=True,
            sync_dist=True,
            prog_bar=True,
            batch_size=n,
        )
        return loss

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        """At the last step ask Lightning to stop: it then validates there, so a run shorter than an epoch
        still gets ``val/dice`` and a best checkpoint (instead of a 'monitored key not found' warning)."""
        trainer = self.trainer
        if trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True

    # ---------------------------------------------------------------- evaluation
    def predict_mask(self, batch: dict) -> tuple[Tensor, Tensor]:
        """Return ``(logits, binary mask)`` for a batch."""
        logits = self(*self.net_inputs(batch))
        return logits, (torch.sigmoid(logits) > self.threshold)

    def _eval_step(self, batch: dict, stage: str) -> dict:
        logits, pred = self.predict_mask(batch)
        loss = self.loss_fn(logits, batch["mask"])
        self.log(f"{stage}/loss", loss, on_epoch=True, batch_size=len(logits), sync_dist=True)
        if stage not in self._evaluators:  # a loop that skipped on_*_epoch_start (e.g. a direct call)
            self._start_evaluation(stage)
        self._evaluators[stage].add_batch(pred, batch)
        return {"logits": logits, "pred": pred}

    def _start_evaluation(self, stage: str) -> None:
        old = self._evaluators.pop(stage, None)
        if old is not None:
            old.close()
        options = dict(self._eval_options[stage])
        if stage == "val" and self.postprocess == "auto":
            options["score_postprocess"] = tuple(POSTPROCESS_STEPS)
        elif stage == "test":
            options["postprocess"] = self.postprocess_choice
        self._evaluators[stage] = CaseEvaluator(self.nsd_tolerance_mm, **options)

    def _finish_evaluation(self, stage: str) -> None:
        """Gather the cases of every rank (each once), keep them and log their means (same on all ranks)."""
        evaluator = self._evaluators.pop(stage, None)
        local = evaluator.finish() if evaluator is not None else []
        rows, extras = gather_cases(local, evaluator.stats() if evaluator is not None else {})
        self.case_rows[stage] = rows
        self.eval_stats[stage] = {k: sum(e.get(k, 0) for e in extras) for k in extras[0]} if extras else {}
        if not rows:
            return
        means = metric_means(rows)
        for key in METRIC_KEYS:
            # identical on every rank (gathered rows): the all-reduced mean is exact, and Lightning does not
            # warn about epoch-level values logged without sync_dist under DDP
            self.log(f"{stage}/{key}", means[key], prog_bar=key == "dice", sync_dist=True)
        self.log(f"{stage}/n_empty_pred", means["n_empty_pred"], sync_dist=True)
        if stage == "val" and self.postprocess == "auto":
            # the same gathered rows on every rank: every rank makes the same choice
            self.postprocess_choice = choose_postprocess(rows, tuple(POSTPROCESS_STEPS))
            chosen = metric_means(rows, (f"dice_pp_{self.postprocess_choice}",))
            self.log("val/dice_postprocessed", chosen[f"dice_pp_{self.postprocess_choice}"], sync_dist=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Store the post-processing chosen on validation with the weights."""
        checkpoint["xray3d_postprocess"] = self.postprocess_choice

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore the stored choice (``model.postprocess=auto``); a fixed setting wins over it."""
        if self.postprocess == "auto":
            self.postprocess_choice = check_postprocess(checkpoint.get("xray3d_postprocess", "none"))

    def on_validation_epoch_start(self) -> None:
        self._start_evaluation("val")

    def on_test_epoch_start(self) -> None:
        self._start_evaluation("test")

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        return self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        return self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._finish_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation("test")

    def teardown(self, stage: str) -> None:
        """Stop background evaluation processes left by an interrupted loop."""
        self.close_evaluation()

    def close_evaluation(self) -> None:
        """Stop background evaluation processes (the report callback calls this on an exception)."""
        for evaluator in self._evaluators.values():
            evaluator.close()
        self._evaluators = {}

    def configure_prediction(self, mc_samples: int = 10, pose_jitter_deg: float = 0.0, seed: int = 0) -> None:
        """Set how :meth:`predict_step` samples (``xray3d-predict`` calls this before ``Trainer.predict``).

        Args:
            mc_samples: Monte Carlo dropout samples per case (1 = one deterministic forward pass).
            pose_jitter_deg: each sample rotates each view in its plane (about its beam axis) by an
                angle drawn uniformly in ``[-pose_jitter_deg, pose_jitter_deg]``; 0 = no jitter.
            seed: seed of the dropout masks and jitter angles, reset for every case, so the same input
                gives the same prediction whatever its batch (on one kind of device).
        """
        if mc_samples < 1:
            raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
        if pose_jitter_deg < 0:
            raise ValueError(f"pose_jitter_deg must be >= 0, got {pose_jitter_deg}")
        self._predict_options = {
            "mc_samples": int(mc_samples),
            "pose_jitter_deg": float(pose_jitter_deg),
            "seed": int(seed),
        }

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Monte Carlo prediction of a batch (see :meth:`configure_prediction`).

        Only the dropout layers run in training mode (batch norm keeps its running statistics). Returns
        ``sample_id``, ``prob`` (mean probability, ``(B, 1, s, s, s)``), ``pred`` (``prob`` above the
        threshold), ``uncertainty`` (predictive entropy of ``prob`` in bits per voxel), ``score``
        (``(B,)``, 1 - mean Dice between the samples' masks and ``pred``), ``prob_std`` (the samples'
        standard deviation per voxel) and ``n_samples``.
        """
        from xray3d.predict.uncertainty import (
            mc_dropout,
            predictive_entropy_bits,
            rotate_views,
            uncertainty_score,
        )

        opts = self._predict_options
        xs = self.net_inputs(batch)
        device = xs[0].device
        jitter = opts["pose_jitter_deg"]
        cuda = [device] if device.type == "cuda" else []
        per_case = []
        for i in range(len(xs[0])):
            # every case draws the same dropout masks and angles: its prediction depends on its input only,
            # not on the batch or the DDP rank it lands in
            with torch.random.fork_rng(devices=cuda, device_type=device.type):
                torch.manual_seed(opts["seed"])
                with mc_dropout(self.net) as n_dropout:
                    n = opts["mc_samples"] if (n_dropout or jitter > 0) else 1
                    # the N samples of one case as one batch (batch norm is in eval mode)
                    inputs = [x[i : i + 1].expand(n, *x.shape[1:]) for x in xs]
                    if jitter > 0:
                        inputs = [
                            rotate_views(x, (torch.rand(n, device=device) * 2 - 1) * jitter)
                            if x.ndim == 4
                            else x
                            for x in inputs
                        ]
                    per_case.append(torch.sigmoid(self(*inputs).float()))
        stacked = torch.stack(per_case, dim=1)  # (N, B, 1, s, s, s)
        prob = stacked.mean(0)
        return {
            "sample_id": batch["sample_id"],
            "prob": prob,
            "pred": prob > self.threshold,
            "uncertainty": predictive_entropy_bits(prob),
            "score": uncertainty_score(stacked, self.threshold),
            "prob_std": stacked.std(0, unbiased=False),
            "n_samples": n,
        }

    def configure_optimizers(self):
        params = [p for p in self.net.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
