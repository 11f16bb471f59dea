"""Image panels: AP/LAT inputs and ground truth vs prediction projections, on disk and in W&B; at test time
also the ground-truth and predicted surface meshes of a few cases as W&B 3D objects."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.loggers import WandbLogger  # noqa: E402

__all__ = ["ReconstructionImages", "panel_figure"]


def panel_figure(
    ap: np.ndarray, lat: np.ndarray, gt: np.ndarray, pred: np.ndarray, title: str = ""
) -> plt.Figure:
    """One row per case: AP, LAT, and GT / prediction mean projections along P (AP-like) and R (LAT-like).

    Args:
        ap: (s, s) AP image, axes (I, R).
        lat: (s, s) LAT image, axes (P, I).
        gt: (s, s, s) PIR ground-truth mask.
        pred: (s, s, s) PIR predicted mask.
        title: figure title.
    """
    cols = [
        ("AP input (I x R)", ap),
        ("LAT input (I x P)", lat.T),
        ("GT along P", gt.mean(0)),
        ("pred along P", pred.mean(0)),
        ("GT along R", gt.mean(2).T),
        ("pred along R", pred.mean(2).T),
    ]
    fig, axes = plt.subplots(1, len(cols), figsize=(2.2 * len(cols), 2.5))
    for axis, (name, img) in zip(axes, cols, strict=True):
        axis.imshow(img, cmap="gray")
        axis.set_title(name, fontsize=8)
        axis.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


class ReconstructionImages(L.Callback):
    """Log example reconstructions every ``every_n_val_epochs`` validation epochs and at test time.

    Images are written as PNG under ``<output_dir>/images`` and mirrored to every WandbLogger. At test
    time, when a WandbLogger is attached, the first ``max_meshes`` cases of the first batch also get their
    ground-truth and predicted surfaces (marching cubes at 0.5, world mm) written as GLB files under
    ``<output_dir>/images/meshes`` and logged as ``wandb.Object3D`` under ``test/mesh_gt`` and
    ``test/mesh_pred``, so the dashboard shows the bones in 3D.

    Args:
        output_dir: run directory.
        every_n_val_epochs: validation epochs between panels.
        max_cases: cases per panel set.
        max_meshes: test cases whose meshes are logged to W&B (0 = none).
    """

    def __init__(
        self, output_dir: str, every_n_val_epochs: int = 5, max_cases: int = 2, max_meshes: int = 2
    ) -> None:
        if every_n_val_epochs < 1:
            raise ValueError(f"every_n_val_epochs must be >= 1, got {every_n_val_epochs}")
        if max_meshes < 0:
            raise ValueError(f"max_meshes must be >= 0, got {max_meshes}")
        self.output_dir = Path(output_dir) / "images"
        self.every_n_val_epochs = every_n_val_epochs
        self.max_cases = max_cases
        self.max_meshes = int(max_meshes)
        self._val_epochs = 0

    def _log_meshes(self, trainer: L.Trainer, batch: dict, pred: torch.Tensor) -> None:
        """Ground-truth and predicted meshes of the first ``max_meshes`` cases as W&B 3D objects."""
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers or self.max_meshes == 0:
            return
        import wandb

        from xray3d.data.projection import pir_affine
        from xray3d.predict.mesh import volume_to_mesh

        objects: dict[str, list] = {"test/mesh_gt": [], "test/mesh_pred": []}
        for i in range(min(self.max_meshes, len(pred))):
            sid = str(batch["sample_id"][i])
            if "affine" in batch:
                affine = batch["affine"][i].double().cpu().numpy()
            else:  # no world frame in the batch: the grid centred on the origin
                spacing = batch.get("spacing_mm")
                affine = pir_affine(tuple(pred.shape[2:]), float(spacing[i]) if spacing is not None else 1.0)
                affine = affine.numpy()
            for kind, vol in (("gt", batch["mask"][i, 0]), ("pred", pred[i, 0])):
                mesh = volume_to_mesh(vol.float().cpu().numpy(), affine)
                if mesh is None:  # an empty prediction has no surface
                    continue
                path = self.output_dir / "meshes" / f"test_step{trainer.global_step:06d}_{sid}_{kind}.glb"
                path.parent.mkdir(parents=True, exist_ok=True)
                mesh.export(path)
                objects[f"test/mesh_{kind}"].append(wandb.Object3D(str(path), caption=f"{sid} {kind}"))
        objects = {k: v for k, v in objects.items() if v}
        if objects:
            for logger in loggers:
                logger.log_metrics(objects, step=trainer.global_step)

    def _emit(self, trainer: L.Trainer, batch: dict, outputs: dict, stage: str) -> None:
        if not trainer.is_global_zero:  # under DDP rank 0's cases are shown
            return
        pred = outputs["pred"].float()
        n = min(self.max_cases, len(pred))
        figs, captions = [], []
        for i in range(n):
            sid = batch["sample_id"][i]
            fig = panel_figure(
                batch["ap"][i, 0].float().cpu().numpy(),
                batch["lat"][i, 0].float().cpu().numpy(),
                batch["mask"][i, 0].float().cpu().numpy(),
                pred[i, 0].cpu().numpy(),
                title=f"{stage} {sid} step {trainer.global_step}",
            )
            self.output_dir.mkdir(parents=True, exist_ok=True)
            fig.savefig(self.output_dir / f"{stage}_step{trainer.global_step:06d}_{sid}.png", dpi=80)
            fig.canvas.draw()
            figs.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
            captions.append(str(sid))
            plt.close(fig)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(
                    key=f"{stage}/examples", images=figs, caption=captions, step=trainer.global_step
                )
        if stage == "test":
            self._log_meshes(trainer, batch, pred)

    @torch.no_grad()
    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if batch_idx == 0 and not trainer.sanity_checking and self._val_epochs % self.every_n_val_epochs == 0:
            self._emit(trainer, batch, outputs, "val")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._val_epochs += 1

    @torch.no_grad()
    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0:
            self._emit(trainer, batch, outputs, "test")
