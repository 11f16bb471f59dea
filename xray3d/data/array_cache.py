"""Compact on-disk training arrays of a prepared dataset, built once and memory-mapped by every process.

Each manifest row (CT + mask NIfTI) becomes, under ``<data_dir>/.array_cache/g<grid>_s<spacing>/``:

* ``<name>.ct.npy``: int16 CT in HU, ``rint`` then clipped to [-32768, 32767], so values inside that range
  differ from the NIfTI by at most 0.5 HU;
* ``<name>.mask.npy``: uint8 mask, ``mask > 0.5``;
* ``<name>.json``: the sidecar, written last (it commits the entry): sample id, source paths and
  fingerprints (size + mtime_ns), ``"status": "ok"`` with the affine (4x4 float64), shape and file sizes,
  or ``"status": "skipped"`` with the reason.

``<name>`` is the sample id made file-name safe plus a hash of the id (:func:`entry_name`). Every check
:func:`load_sample_arrays` makes (missing / corrupt file, CT and mask on different grids, wrong shape or
voxel size, NaN/inf, empty mask) runs once, at build time; a bad sample is recorded with its reason and
skipped, never silently. All files are written atomically (temporary file + ``os.replace``), so several
builders (DDP ranks, nodes on a shared file system) may run at once and an interrupted build leaves no
half-written entry. A re-run rebuilds only entries that are missing, damaged (a ``.npy`` whose size is not
the recorded one) or whose source files changed (fingerprint).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xray3d.data.io import DataError, load_nifti, write_bytes_atomic, write_json_atomic

__all__ = [
    "CACHE_DIRNAME",
    "CacheEntry",
    "CacheBuild",
    "array_cache_dir",
    "entry_name",
    "load_sample_arrays",
    "build_entries",
    "ensure_array_cache",
]

log = logging.getLogger(__name__)

CACHE_DIRNAME = ".array_cache"
FORMAT_VERSION = 1
_INT16_MIN, _INT16_MAX = np.iinfo(np.int16).min, np.iinfo(np.int16).max


def array_cache_dir(data_dir: str | Path, spacing_mm: float, grid_size: int) -> Path:
    """The cache folder of one training grid: ``<data_dir>/.array_cache/g<grid>_s<spacing>``."""
    return Path(data_dir) / CACHE_DIRNAME / f"g{int(grid_size)}_s{float(spacing_mm):g}"


def entry_name(sample_id: str) -> str:
    """A file-name-safe, collision-free stem for a sample id (safe characters + a hash of the id)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", str(sample_id)).lstrip(".")[:80] or "sample"
    return f"{safe}-{hashlib.sha1(str(sample_id).encode()).hexdigest()[:10]}"


@dataclass(frozen=True, eq=False)
class CacheEntry:
    """One usable cached sample.

    Attributes:
        sample_id: the manifest id.
        ct_file: int16 HU ``.npy`` (D, H, W).
        mask_file: uint8 {0, 1} ``.npy`` (D, H, W).
        affine: voxel-to-world (mm) 4x4 float64 of the CT.
        fingerprint: digest of the source files' fingerprints (changes when a source file changes).
    """

    sample_id: str
    ct_file: Path
    mask_file: Path
    affine: np.ndarray
    fingerprint: str


@dataclass
class CacheBuild:
    """Result of :func:`build_entries`: usable entries (rows order), skipped rows, built / reused ids."""

    cache_dir: Path
    entries: list[CacheEntry] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    built: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)

    def report(self) -> dict[str, list]:
        """``{"built": [ids], "reused": [ids], "skipped": [{"sample_id", "reason"}]}``."""
        return {"built": list(self.built), "reused": list(self.reused), "skipped": list(self.skipped)}


def load_sample_arrays(
    root: Path, row: dict, spacing_mm: float, grid_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Load and validate one manifest row.

    Args:
        root: dataset directory (the row's paths are relative to it).
        row: manifest row with ``ct_path`` and ``mask_path``.
        spacing_mm: expected voxel size.
        grid_size: expected grid side.

    Returns:
        ``(ct, mask, affine)``: float32 HU (D, H, W), bool (D, H, W) (``mask > 0.5``), float64 (4, 4).

    Raises:
        DataError: naming the file and the problem (missing, corrupt, grid mismatch, NaN, empty mask).
    """
    ct_path, mask_path = Path(root) / str(row["ct_path"]), Path(root) / str(row["mask_path"])
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
    return ct, mask > 0.5, np.asarray(ct_img.affine, dtype=np.float64)


def _fingerprint(path: Path) -> dict | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def _file_size(path: Path) -> int | None:
    try:
        return int(path.stat().st_size)
    except OSError:
        return None


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _read_sidecar(path: Path) -> dict | None:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("version") == FORMAT_VERSION else None


def _entry_from(meta: dict, cache_dir: Path, name: str) -> CacheEntry:
    digest = hashlib.sha1(json.dumps(meta["sources"], sort_keys=True).encode()).hexdigest()[:16]
    return CacheEntry(
        sample_id=meta["sample_id"],
        ct_file=cache_dir / f"{name}.ct.npy",
        mask_file=cache_dir / f"{name}.mask.npy",
        affine=np.asarray(meta["affine"], dtype=np.float64),
        fingerprint=digest,
    )


def _reusable(meta: dict | None, sources: dict, sample_id: str, cache_dir: Path, name: str) -> bool:
    if meta is None or meta.get("sample_id") != sample_id or meta.get("sources") != sources:
        return False
    if meta.get("status") == "skipped":
        return True
    if meta.get("status") != "ok" or "affine" not in meta:
        return False
    sizes = meta.get("file_sizes", {})
    return all(_file_size(cache_dir / f"{name}.{kind}.npy") == sizes.get(kind) for kind in ("ct", "mask"))


def _build_one(
    root: Path, row: dict, sources: dict, spacing_mm: float, grid_size: int, cache_dir: Path, name: str
) -> dict:
    meta: dict[str, Any] = {"version": FORMAT_VERSION, "sample_id": str(row["sample_id"]), "sources": sources}
    try:
        ct, mask, affine = load_sample_arrays(root, row, spacing_mm, grid_size)
    except DataError as exc:
        meta.update(status="skipped", reason=str(exc))
        write_json_atomic(meta, cache_dir / f"{name}.json")
        return meta
    ct16 = np.clip(np.rint(ct), _INT16_MIN, _INT16_MAX).astype(np.int16)
    sizes = {}
    for kind, array in (("ct", ct16), ("mask", mask.astype(np.uint8))):
        data = _npy_bytes(array)
        write_bytes_atomic(data, cache_dir / f"{name}.{kind}.npy")
        sizes[kind] = len(data)
    meta.update(status="ok", shape=list(ct.shape), file_sizes=sizes, affine=affine.tolist())
    write_json_atomic(meta, cache_dir / f"{name}.json")  # last: commits the entry
    return meta


def build_entries(
    data_dir: str | Path, rows: Iterable[dict], spacing_mm: float, grid_size: int
) -> CacheBuild:
    """Ensure the cache entries of manifest rows, building only missing, damaged or outdated ones.

    Args:
        data_dir: dataset directory (the rows' paths are relative to it; the cache lives under it).
        rows: manifest rows (``sample_id``, ``ct_path``, ``mask_path``).
        spacing_mm: voxel size of the training grid.
        grid_size: voxels per side of the training grid.

    Returns:
        The usable entries and their rows in rows order, skipped rows with reasons, built / reused ids.

    Raises:
        DataError: the cache folder cannot be created or written.
    """
    root = Path(data_dir)
    cache_dir = array_cache_dir(root, spacing_mm, grid_size)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cannot create the array cache {cache_dir} ({exc}); make the dataset directory writable"
        ) from exc
    out = CacheBuild(cache_dir)
    seen: set[str] = set()
    for row in rows:
        sid = str(row["sample_id"])
        if sid in seen:
            out.skipped.append(
                {
                    "sample_id": sid,
                    "reason": f"sample id {sid} is listed twice in the manifest; re-prepare it",
                }
            )
            continue
        seen.add(sid)
        name = entry_name(sid)
        sources = {
            "ct_path": str(row["ct_path"]),
            "mask_path": str(row["mask_path"]),
            "ct": _fingerprint(root / str(row["ct_path"])),
            "mask": _fingerprint(root / str(row["mask_path"])),
        }
        meta = _read_sidecar(cache_dir / f"{name}.json")
        if _reusable(meta, sources, sid, cache_dir, name):
            out.reused.append(sid)
        else:
            try:
                meta = _build_one(root, row, sources, spacing_mm, grid_size, cache_dir, name)
            except OSError as exc:
                raise DataError(
                    f"cannot write the array cache entry of {sid} in {cache_dir} ({exc}); "
                    "check free space and permissions"
                ) from exc
            out.built.append(sid)
        if meta["status"] == "ok":
            out.entries.append(_entry_from(meta, cache_dir, name))
            out.rows.append(row)
        else:
            out.skipped.append({"sample_id": sid, "reason": meta["reason"]})
    return out


def ensure_array_cache(
    data_dir: str | Path,
    manifest_path: str | Path,
    anatomy: str,
    spacing_mm: float,
    grid_size: int,
    splits: Sequence[str] | None = None,
) -> dict:
    """Build (or resume) the array cache of a dataset's rows of one anatomy; call once per node.

    Args:
        data_dir: dataset directory.
        manifest_path: its manifest CSV.
        anatomy: manifest ``anatomy`` value to cache.
        spacing_mm: voxel size of the training grid.
        grid_size: voxels per side of the training grid.
        splits: split names to cache (``None``: all).

    Returns:
        ``{"built": [sample ids], "reused": [sample ids], "skipped": [{"sample_id", "reason"}]}``; a row
        whose validation failed is in ``skipped`` and also in ``built`` (checked now) or ``reused`` (its
        cached reason still holds: the source files did not change). Duplicate ids are only skipped.
    """
    from xray3d.data.dataset import read_manifest  # dataset.py imports this module

    df = read_manifest(manifest_path)
    df = df[df["anatomy"] == anatomy]
    if splits is not None:
        df = df[df["split"].isin(list(splits))]
    result = build_entries(data_dir, df.to_dict("records"), spacing_mm, grid_size)
    for s in result.skipped:
        log.warning("array cache: skipping sample %s: %s", s["sample_id"], s["reason"])
    log.info(
        "array cache %s: %d built, %d reused, %d skipped",
        result.cache_dir,
        len(result.built),
        len(result.reused),
        len(result.skipped),
    )
    return result.report()
