"""Samples listed in a prepared dataset's manifest: CT ROI (HU) + binary mask, PIR."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from xray3d.data.io import DataError, load_nifti

__all__ = ["ManifestDataset", "read_manifest", "load_sample"]

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("sample_id", "anatomy", "split", "ct_path", "mask_path")


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read and check a dataset manifest (CSV with at least :data:`REQUIRED_COLUMNS`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest not found: {path}. Prepare the dataset first (see README: Datasets).")
    try:
        df = pd.read_csv(path, dtype={"sample_id": str, "level": str, "split": str})
    except Exception as exc:
        raise DataError(f"manifest {path} cannot be read as CSV ({exc}); delete it and re-prepare") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"manifest {path} lacks columns {missing}; re-prepare the dataset")
    return df


def load_sample(root: Path, row: dict, spacing_mm: float, grid_size: int) -> dict:
    """Load and validate one sample.

    Raises:
        DataError: naming the file and the problem (missing, corrupt, grid mismatch, NaN, empty mask).
    """
    ct_path, mask_path = root / row["ct_path"], root / row["mask_path"]
    ct_img = load_nifti(ct_path, "CT")
    mask_img = load_nifti(mask_path, "mask")
    ct = np.asarray(ct_img.dataobj, dtype=np.float32)
    mask = np.asarray(mask_img.dataobj)
    if ct.shape != mask.shape or not np.allclose(ct_img.affine, mask_img.affine, atol=1e-3):
        raise DataError(
            f"CT {ct_path} {ct.shape} and mask {mask_path} {mask.shape} do not share one grid "
            "(shape or affine differ); re-prepare this sample"
        )
    if ct.shape != (grid_size,) * 3:
        raise DataError(f"{ct_path} has shape {ct.shape}, the data config expects {(grid_size,) * 3}")
    vox = np.sqrt((ct_img.affine[:3, :3] ** 2).sum(axis=0))
    if not np.allclose(vox, spacing_mm, atol=1e-3):
        raise DataError(
            f"{ct_path} has voxel size {vox.round(4).tolist()} mm, the data config expects {spacing_mm} mm"
        )
    if not np.isfinite(ct).all():
        raise DataError(f"CT {ct_path} contains NaN/inf voxels; re-prepare it from a valid scan")
    if not mask.any():
        raise DataError(f"mask {mask_path} is empty; the sample has no bone to reconstruct")
    return {
        "ct": torch.from_numpy(ct)[None],
        "mask": torch.from_numpy((mask > 0.5).astype(np.float32))[None],
        "sample_id": str(row["sample_id"]),
        "spacing_mm": float(spacing_mm),
        # voxel -> world (mm) of the scan the ROI was cut from: clinical points are reported in it
        "affine": torch.from_numpy(np.asarray(ct_img.affine, dtype=np.float64)),
    }


class ManifestDataset(Dataset):
    """In-memory dataset of the manifest rows of some splits and one anatomy.

    Bad samples are skipped with a logged reason (kept in :attr:`skipped`), never silently.

    Args:
        root: dataset directory (paths in the manifest are relative to it).
        manifest: manifest CSV path.
        splits: split names to include.
        anatomy: anatomy to include.
        spacing_mm: expected voxel size.
        grid_size: expected grid side.

    Items: ``{"ct": (1, D, H, W) float32 HU, "mask": (1, D, H, W) float32 {0,1}, "sample_id": str,
    "spacing_mm": float, "affine": (4, 4) float64 voxel-to-world mm}``, PIR.
    """

    def __init__(
        self,
        root: str | Path,
        manifest: str | Path,
        splits: Sequence[str],
        anatomy: str,
        spacing_mm: float,
        grid_size: int,
    ) -> None:
        self.root = Path(root)
        df = read_manifest(manifest)
        rows = df[(df["split"].isin(list(splits))) & (df["anatomy"] == anatomy)].to_dict("records")
        self.samples: list[dict] = []
        self.metadata: list[dict] = []
        self.skipped: list[dict] = []
        for row in rows:
            try:
                self.samples.append(load_sample(self.root, row, spacing_mm, grid_size))
                self.metadata.append(row)
            except DataError as exc:
                log.warning("skipping sample %s: %s", row["sample_id"], exc)
                self.skipped.append({"sample_id": row["sample_id"], "reason": str(exc)})

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        return self.samples[index]
