"""Samples listed in a prepared dataset's manifest: CT ROI (HU) + binary mask, PIR, read lazily."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from xray3d.data.array_cache import CacheEntry, build_entries, load_sample_arrays
from xray3d.data.io import DataError

__all__ = ["ManifestDataset", "VariantDataset", "parse_val_variants", "read_manifest", "load_sample", "load_sample_arrays"]

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("sample_id", "anatomy", "split", "ct_path", "mask_path")


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read and check a dataset manifest (CSV with at least :data:`REQUIRED_COLUMNS`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest not found: {path}. Prepare the dataset first (docs/datasets.md).")
    try:
        df = pd.read_csv(path, dtype={"sample_id": str, "level": str, "split": str})
    except Exception as exc:
        raise DataError(f"manifest {path} cannot be read as CSV ({exc}); delete it and re-prepare") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"manifest {path} lacks columns {missing}; re-prepare the dataset")
    return df


def load_sample(root: Path, row: dict, spacing_mm: float, grid_size: int) -> dict:
    """Load and validate one sample straight from its NIfTI files (no cache), as a dataset item.

    Raises:
        DataError: naming the file and the problem (missing, corrupt, grid mismatch, NaN, empty mask).
    """
    ct, mask, affine = load_sample_arrays(Path(root), row, spacing_mm, grid_size)
    return {
        "ct": torch.from_numpy(ct)[None],
        "mask": torch.from_numpy(mask.astype(np.float32))[None],
        "sample_id": str(row["sample_id"]),
        "spacing_mm": float(spacing_mm),
        "affine": torch.from_numpy(affine),
    }


class ManifestDataset(Dataset):
    """Lazy dataset of the manifest rows of some splits and one anatomy, read from the array cache.

    Construction ensures the :mod:`~xray3d.data.array_cache` entries of its rows (building missing or
    outdated ones, so it works without ``prepare_data``) and keeps only ids, file paths and affines;
    items memory-map two ``.npy`` files, so memory per process does not grow with the dataset (the OS
    page cache shares the files between ranks and DataLoader workers). Bad samples are skipped with a
    logged reason (kept in :attr:`skipped`), never silently.

    Args:
        root: dataset directory (paths in the manifest are relative to it).
        manifest: manifest CSV path.
        splits: split names to include.
        anatomy: anatomy to include.
        spacing_mm: expected voxel size.
        grid_size: expected grid side.

    Attributes:
        metadata: manifest rows of the usable samples, in manifest order.
        sample_ids: their ids.
        skipped: ``{"sample_id", "reason"}`` of the unusable rows.

    Items: ``{"ct": (1, D, H, W) float32 HU (cached as int16: within 0.5 HU of the NIfTI), "mask":
    (1, D, H, W) float32 {0,1}, "sample_id": str, "spacing_mm": float, "affine": (4, 4) float64
    voxel-to-world mm}``, PIR.
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
        self.anatomy = str(anatomy)
        self.spacing_mm = float(spacing_mm)
        self.grid_size = int(grid_size)
        df = read_manifest(manifest)
        rows = df[(df["split"].isin(list(splits))) & (df["anatomy"] == anatomy)].to_dict("records")
        build = build_entries(self.root, rows, self.spacing_mm, self.grid_size)
        self.cache_dir: Path = build.cache_dir
        self._entries: list[CacheEntry] = build.entries
        self.metadata: list[dict] = build.rows
        self.sample_ids: list[str] = [e.sample_id for e in self._entries]
        self.skipped: list[dict] = build.skipped
        for s in self.skipped:
            log.warning("skipping sample %s: %s", s["sample_id"], s["reason"])

    def __len__(self) -> int:
        return len(self._entries)

    def fingerprint(self, index: int) -> str:
        """Digest of the sample's source files (size + mtime); changes when they change."""
        return self._entries[index].fingerprint

    def affine(self, index: int) -> np.ndarray:
        """Voxel-to-world (mm) affine of a sample, float64 (4, 4)."""
        return self._entries[index].affine.copy()

    def _read(self, path: Path, dtype: type) -> np.ndarray:
        """Copy one memory-mapped cache array into a new ``dtype`` array (the mapping is released)."""
        try:
            return np.array(np.load(path, mmap_mode="r", allow_pickle=False), dtype=dtype)
        except (OSError, ValueError) as exc:
            raise DataError(
                f"array cache file {path} is missing or damaged ({exc}); it is rebuilt when the dataset is "
                "constructed again (or delete the folder to rebuild it all)"
            ) from exc

    def mask_array(self, index: int) -> np.ndarray:
        """The mask of a sample as bool (D, H, W), reading only the mask file."""
        return self._read(self._entries[index].mask_file, bool)

    def __getitem__(self, index: int) -> dict:
        entry = self._entries[index]
        ct = self._read(entry.ct_file, np.float32)
        mask = self._read(entry.mask_file, np.float32)
        return {
            "ct": torch.from_numpy(ct)[None],
            "mask": torch.from_numpy(mask)[None],
            "sample_id": entry.sample_id,
            "spacing_mm": self.spacing_mm,
            # voxel -> world (mm) of the scan the ROI was cut from: clinical points are reported in it
            "affine": torch.from_numpy(entry.affine.copy()),
        }


def parse_val_variants(variants: Sequence[dict]) -> list[tuple[torch.Tensor, bool, str]]:
    """Check ``data.val_variants`` and return ``(factors_pir (3,), flip_lr, tag)`` per variant.

    Raises:
        ValueError: naming ``data.val_variants[i]`` for an unknown key, a scale that is not > 0, or a
            variant that changes nothing.
    """
    parsed = []
    for i, v in enumerate(variants):
        v = dict(v)
        unknown = set(v) - {"scale", "flip_lr"}
        if unknown:
            raise ValueError(f"data.val_variants[{i}]: unknown keys {sorted(unknown)} (use scale, flip_lr)")
        scale = v.get("scale", 1.0)
        factors = [float(scale)] * 3 if isinstance(scale, (int, float)) else [float(f) for f in scale]
        if len(factors) != 3 or min(factors) <= 0:
            raise ValueError(f"data.val_variants[{i}].scale must be > 0 or [p, i, r] > 0, got {scale}")
        flip = bool(v.get("flip_lr", False))
        if len(set(factors)) == 1:
            tag = f"x{factors[0]:.2f}" if factors[0] != 1 else ""
        else:
            tag = "x" + "-".join(f"{f:.2f}" for f in factors)
        tag = "+".join(t for t in (tag, "mirror" if flip else "") if t)
        if not tag:
            raise ValueError(f"data.val_variants[{i}] changes nothing (scale 1, no flip_lr)")
        parsed.append((torch.tensor(factors), flip, tag))
    return parsed


class VariantDataset(Dataset):
    """A dataset followed by fixed re-sized / mirrored copies of each of its items (validation variants).

    The data module applies the change on the device, before rendering
    (:func:`~xray3d.data.augment.apply_variants`), from the two keys added to every item:
    ``variant_scale_pir`` ``(3,)`` (enlargement along P, I, R; 1 = unchanged) and ``variant_flip_lr``
    (bool). Copies get the sample id ``<id>@<tag>`` (e.g. ``T5@x1.25``, ``T5@x0.85+mirror``), so every
    case is scored on its own and the originals keep their ids.

    Args:
        base: the dataset (items hold ``ct``, ``mask`` and ``sample_id``).
        variants: one mapping per copy: ``scale`` (a factor, or ``[p, i, r]`` factors, > 0) and
            ``flip_lr`` (bool); e.g. ``[{"scale": 1.25}, {"scale": 0.85, "flip_lr": True}]``.

    Raises:
        ValueError: naming ``data.val_variants`` for an unknown key or a scale that is not > 0.
    """

    def __init__(self, base: Dataset, variants: Sequence[dict]) -> None:
        self.base = base
        self.variants = [(torch.ones(3), False, "")] + parse_val_variants(variants)

    def __len__(self) -> int:
        return len(self.base) * len(self.variants)

    def __getitem__(self, index: int) -> dict:
        n = len(self.base)
        factors, flip, tag = self.variants[index // n]
        item = dict(self.base[index % n])
        if tag:
            item["sample_id"] = f"{item['sample_id']}@{tag}"
        item["variant_scale_pir"] = factors.clone()
        item["variant_flip_lr"] = torch.tensor(flip)
        return item
