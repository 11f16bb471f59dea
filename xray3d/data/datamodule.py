"""LightningDataModule: CT ROIs + masks from a manifest, DRRs rendered on the batch's device."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, RandomSampler

from xray3d.data.dataset import ManifestDataset
from xray3d.data.io import DataError
from xray3d.data.projection import BiplanarProjector

__all__ = ["BiplanarDataModule"]

log = logging.getLogger(__name__)


class BiplanarDataModule(L.LightningDataModule):
    """Deliver ``{"ct", "mask"}`` batches and render ``{"ap", "lat"}`` after the device transfer.

    Rendering happens in :meth:`on_after_batch_transfer`, i.e. on the GPU when the model is on one.
    Training batches get a fresh random pose perturbation and intensity jitter every step;
    validation, test and predict use the fixed reference poses.

    Args:
        data_dir: prepared dataset directory (holding ``manifest.csv``).
        projection: the DRR renderer (geometry in mm / degrees).
        anatomy: manifest ``anatomy`` value to use.
        spacing_mm: voxel size of the training grid.
        grid_size: voxels per side of the training grid.
        prepare: optional callable ``prepare(data_dir)`` that creates the dataset when the manifest is
            missing (e.g. the embedded chest CT).
        train_splits / val_splits / test_splits: manifest split names per stage.
        batch_size: samples per batch.
        train_samples_per_epoch: samples drawn (with replacement) per training epoch; ``None`` = one
            pass over the training set.
        num_workers: DataLoader workers.
        rotation_deg: max absolute random rotation added to each Euler angle of each view (training).
        gamma_jitter: training images get ``img ** gamma``, ``log(gamma) ~ U(-j, j)``.
        noise_std: std of Gaussian noise added to the [0, 1] training images.
        clinical: ``measure(mask, affine) -> dict`` of the anatomy's clinical parameters
            (``conf/clinical/<anatomy>.yaml``), measured at test time on ground truth and prediction.
        group_by: manifest metadata columns the test report disaggregates by (subgroups).
    """

    def __init__(
        self,
        data_dir: str,
        projection: BiplanarProjector,
        anatomy: str = "vertebra",
        spacing_mm: float = 1.5,
        grid_size: int = 64,
        prepare: Callable[[str], object] | None = None,
        train_splits: tuple[str, ...] = ("train",),
        val_splits: tuple[str, ...] = ("val",),
        test_splits: tuple[str, ...] = ("test",),
        batch_size: int = 4,
        train_samples_per_epoch: int | None = None,
        num_workers: int = 0,
        rotation_deg: float = 3.0,
        gamma_jitter: float = 0.1,
        noise_std: float = 0.01,
        clinical: Callable[..., dict] | None = None,
        group_by: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if rotation_deg < 0 or gamma_jitter < 0 or noise_std < 0:
            raise ValueError("data.rotation_deg, data.gamma_jitter and data.noise_std must be >= 0")
        self.data_dir = Path(data_dir)
        self.projection = projection
        self.anatomy = anatomy
        self.spacing_mm = float(spacing_mm)
        self.grid_size = int(grid_size)
        self.prepare = prepare
        self.splits = {"train": tuple(train_splits), "val": tuple(val_splits), "test": tuple(test_splits)}
        self.batch_size = batch_size
        self.train_samples_per_epoch = train_samples_per_epoch
        self.num_workers = num_workers
        self.rotation_deg = float(rotation_deg)
        self.gamma_jitter = float(gamma_jitter)
        self.noise_std = float(noise_std)
        self.clinical = clinical
        self.group_by = tuple(group_by)
        self.datasets: dict[str, ManifestDataset] = {}

    @property
    def manifest(self) -> Path:
        """Path of the dataset manifest."""
        return self.data_dir / "manifest.csv"

    # ---------------------------------------------------------------- stages
    def prepare_data(self) -> None:
        """Create the dataset once if it is missing and a preparer is configured."""
        if self.prepare is not None:
            self.prepare(str(self.data_dir))
        elif not self.manifest.is_file():
            raise DataError(
                f"no manifest at {self.manifest} and no data.prepare configured: prepare the dataset first "
                "(see README: Datasets) or point data.data_dir at a prepared dataset"
            )

    def dataset(self, stage: str) -> ManifestDataset:
        """The dataset of one stage ("train", "val" or "test"), loaded on first use."""
        if stage not in self.datasets:
            ds = ManifestDataset(
                self.data_dir,
                self.manifest,
                self.splits[stage],
                self.anatomy,
                self.spacing_mm,
                self.grid_size,
            )
            if len(ds) == 0:
                raise DataError(
                    f"no usable {self.anatomy!r} samples in splits {self.splits[stage]} of {self.manifest} "
                    f"(skipped: {ds.skipped}); check data.anatomy / data.*_splits"
                )
            self.datasets[stage] = ds
        return self.datasets[stage]

    def setup(self, stage: str | None = None) -> None:
        """Load the datasets the stage needs."""
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for name in needed.get(stage or "fit", ("train", "val", "test")):
            self.dataset(name)

    def train_dataloader(self) -> DataLoader:
        ds = self.dataset("train")
        n = self.train_samples_per_epoch or len(ds)
        sampler = RandomSampler(ds, replacement=n > len(ds), num_samples=n)
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            drop_last=n >= self.batch_size,
            persistent_workers=self.num_workers > 0,
        )

    def _eval_loader(self, stage: str) -> DataLoader:
        return DataLoader(
            self.dataset(stage), batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    # ---------------------------------------------------------------- rendering
    def render(self, batch: dict, augment: bool, rotation_offsets_deg: torch.Tensor | None = None) -> dict:
        """Add ``ap`` and ``lat`` views (B, 1, s, s) to a batch holding ``ct`` (B, 1, s, s, s) in HU."""
        ct = batch["ct"]
        b = ct.shape[0]
        offsets = rotation_offsets_deg
        if augment and self.rotation_deg > 0 and offsets is None:
            offsets = (torch.rand(b, 2, 3, device=ct.device) * 2 - 1) * self.rotation_deg
        views = self.projection(ct, spacing_mm=self.spacing_mm, rotation_offsets_deg=offsets)
        if augment:
            for key in ("ap", "lat"):
                img = views[key]
                if self.gamma_jitter > 0:
                    gamma = torch.exp((torch.rand(b, 1, 1, 1, device=img.device) * 2 - 1) * self.gamma_jitter)
                    img = img.clamp_min(0) ** gamma
                if self.noise_std > 0:
                    img = (img + torch.randn_like(img) * self.noise_std).clamp(0, 1)
                views[key] = img
        batch.update(views)
        return batch

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Render the views on the device the batch now lives on."""
        training = self.trainer is not None and self.trainer.training
        return self.render(batch, augment=training)
