"""LightningDataModule: CT ROIs + masks from a manifest, DRRs rendered on the batch's device."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from xray3d.data.array_cache import ensure_array_cache
from xray3d.data.augment import AnatomyAugment, apply_variants
from xray3d.data.dataset import ManifestDataset, VariantDataset, parse_val_variants
from xray3d.data.io import DataError
from xray3d.data.projection import BiplanarProjector
from xray3d.data.sampling import EpochSampler, rank_seed

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
        augment: anatomy-level augmentation of the training CT and mask before rendering
            (:class:`~xray3d.data.augment.AnatomyAugment`: scale, rotation, mirroring, bone density);
            ``None`` = off.
        val_variants: fixed copies of every validation case with the anatomy re-sized and/or mirrored
            before rendering (:class:`~xray3d.data.dataset.VariantDataset`), e.g.
            ``[{scale: 1.25}, {scale: 0.85, flip_lr: true}]``: validation (and so checkpoint and
            post-processing choice) then rewards a model that follows the image rather than the one
            training patient's bone size. Empty = the validation cases as they are.
        clinical: ``measure(mask, affine) -> dict`` of the anatomy's clinical parameters
            (``conf/clinical/<anatomy>.yaml``), measured at test time on ground truth and prediction.
        group_by: manifest metadata columns the test report disaggregates by (subgroups).
        seed: run seed (``${seed}``). The training sampler and the augmentation draws (pose, gamma,
            noise) use their own generators seeded from ``(seed, global rank)``
            (:func:`~xray3d.data.sampling.rank_seed`): distinct on every DDP rank, reproducible per rank.
        prepare_hint: the commands that prepare this dataset, shown when it is missing.
        pin_memory: page-locked host batches for asynchronous (``non_blocking``) copies to the GPU;
            ``None`` = on when CUDA is available.

    Under DDP each rank draws ``ceil(train_samples_per_epoch / world_size)`` training samples per
    epoch (:class:`~xray3d.data.sampling.EpochSampler`), so an epoch holds the configured number of
    samples whatever the number of GPUs. Validation and test use Lightning's distributed sampler,
    which pads the last rank by repeating cases; the evaluation engine drops the repeats by
    ``sample_id`` (:mod:`xray3d.evaluation.engine`).
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
        augment: AnatomyAugment | None = None,
        val_variants: list[dict] | tuple = (),
        clinical: Callable[..., dict] | None = None,
        group_by: tuple[str, ...] = (),
        seed: int = 0,
        pin_memory: bool | None = None,
        prepare_hint: str | None = None,
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
        self.augment = augment
        self.val_variants = [dict(v) for v in (val_variants or ())]
        parse_val_variants(self.val_variants)  # check the settings now, not at the first validation
        self.clinical = clinical
        self.group_by = tuple(group_by)
        self.seed = int(seed)
        self.prepare_hint = prepare_hint
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.datasets: dict[str, ManifestDataset] = {}
        self._generators: dict[str, torch.Generator] = {}
        #: ``(2, 3)`` degrees added to the (AP, LAT) ZXY Euler angles of every non-training view
        #: (angle-perturbation robustness, ``xray3d-robustness``); None = the reference poses
        self.eval_rotation_offsets_deg: torch.Tensor | None = None

    @property
    def manifest(self) -> Path:
        """Path of the dataset manifest."""
        return self.data_dir / "manifest.csv"

    # ---------------------------------------------------------------- stages
    def prepare_data(self) -> None:
        """Create the dataset once if it is missing and a preparer is configured, then its array cache.

        Lightning calls this on one process per node (``prepare_data_per_node``) before the other ranks
        read anything, so the memory-mapped cache of every split is built once, not once per rank.
        """
        if self.prepare is not None:
            self.prepare(str(self.data_dir))
        elif not self.manifest.is_file():
            how = f"prepare it once with: {self.prepare_hint}" if self.prepare_hint else "prepare it first"
            raise DataError(
                f"no manifest at {self.manifest} and no data.prepare configured: {how} "
                "(docs/datasets.md), or point data.data_dir at a prepared dataset"
            )
        splits = sorted({s for names in self.splits.values() for s in names})
        report = ensure_array_cache(
            self.data_dir, self.manifest, self.anatomy, self.spacing_mm, self.grid_size, splits=splits
        )
        log.info("array cache of %s: %s", self.data_dir, {k: len(v) for k, v in report.items() if v})

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
        rank, world = self._rank()
        if world > 1 and stage in (None, "fit"):
            # the model was initialised identically on every rank (DDP also broadcasts rank 0's weights);
            # from here on dropout and input noise must differ per rank
            torch.manual_seed(rank_seed(self.seed, rank, stream=2))

    def _rank(self) -> tuple[int, int]:
        """``(global rank, world size)`` of this process (``(0, 1)`` outside a distributed Trainer)."""
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return int(getattr(trainer, "global_rank", 0)), int(getattr(trainer, "world_size", 1))

    def train_dataloader(self) -> DataLoader:
        ds = self.dataset("train")
        rank, world = self._rank()
        n = self.train_samples_per_epoch or len(ds)
        sampler = EpochSampler(len(ds), n, num_replicas=world, rank=rank, seed=self.seed)
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            drop_last=sampler.num_samples >= self.batch_size,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
        )

    def _eval_loader(self, stage: str) -> DataLoader:
        ds = self.dataset(stage)
        return DataLoader(
            VariantDataset(ds, self.val_variants) if stage == "val" and self.val_variants else ds,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    # ---------------------------------------------------------------- rendering
    def generator(self, device: torch.device) -> torch.Generator:
        """The augmentation generator of this rank on ``device``, seeded from ``(seed, global rank)``."""
        key = str(device)
        if key not in self._generators:
            rank, _ = self._rank()
            self._generators[key] = torch.Generator(device=device).manual_seed(rank_seed(self.seed, rank))
        return self._generators[key]

    def render(self, batch: dict, augment: bool, rotation_offsets_deg: torch.Tensor | None = None) -> dict:
        """Add ``ap`` and ``lat`` views (B, 1, s, s) to a batch holding ``ct`` (B, 1, s, s, s) in HU.

        Rendering runs in float32 with autocast off (DRR line integrals of HU volumes lose too much in
        half precision) and without host-device synchronisation; the network's mixed precision starts
        in the training step.
        """
        ct = batch["ct"]
        b, device = ct.shape[0], ct.device
        offsets = rotation_offsets_deg
        g = self.generator(device) if augment else None
        with torch.autocast(device_type=device.type, enabled=False):
            if "variant_scale_pir" in batch and "mask" in batch:
                ct, batch["mask"] = apply_variants(
                    ct, batch["mask"], batch["variant_scale_pir"], batch["variant_flip_lr"]
                )
            if augment and self.augment is not None and self.augment.active and "mask" in batch:
                ct, batch["mask"] = self.augment(ct, batch["mask"], g)
            if augment and self.rotation_deg > 0 and offsets is None:
                offsets = (torch.rand(b, 2, 3, device=device, generator=g) * 2 - 1) * self.rotation_deg
            views = self.projection(ct.float(), spacing_mm=self.spacing_mm, rotation_offsets_deg=offsets)
            if augment:
                for key in ("ap", "lat"):
                    img = views[key]
                    if self.gamma_jitter > 0:
                        u = torch.rand(b, 1, 1, 1, device=device, generator=g)
                        img = img.clamp_min(0) ** torch.exp((u * 2 - 1) * self.gamma_jitter)
                    if self.noise_std > 0:
                        noise = torch.randn(img.shape, device=device, generator=g) * self.noise_std
                        img = (img + noise).clamp(0, 1)
                    views[key] = img
        batch.update(views)
        return batch

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Render the views on the device the batch now lives on."""
        training = self.trainer is not None and self.trainer.training
        offsets = None
        if not training and self.eval_rotation_offsets_deg is not None:
            b = batch["ct"].shape[0]
            offsets = self.eval_rotation_offsets_deg.to(batch["ct"].device).expand(b, 2, 3)
        return self.render(batch, augment=training, rotation_offsets_deg=offsets)
