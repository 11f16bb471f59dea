"""TotalSegmentator raw-data fixtures in both on-disk layouts, from a real TotalSegmentator v2 output.

Source: ``shared/data/totalsegmentator-example`` (Apache-2.0, TotalSegmentator's test files): a real
abdomen-pelvis CT at 3 mm and its real v2 multi-label segmentation (``--fast``). The v2 layout is a copy
of the two files (``sXXXX/ct.nii.gz`` + ``sXXXX/seg.nii.gz``); the v1 dataset layout (Zenodo 6802614) has
one binary NIfTI per structure, ``sXXXX/segmentations/<structure>.nii.gz``, written here from the same
multi-label file for every structure the preparers use. Every subject is the same scan.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from xray3d.testing import require_file, shared_data_dir

__all__ = ["example_dir", "write_totalseg_subject", "write_totalseg_fixture", "LAYOUTS"]

LAYOUTS = ("v1", "v2")


def example_dir() -> Path:
    """Folder of the real TotalSegmentator example (``example_ct.nii.gz`` + ``example_seg.nii.gz``)."""
    return shared_data_dir() / "totalsegmentator-example"


def write_totalseg_subject(folder: str | Path, layout: str = "v2", example: Path | None = None) -> Path:
    """Write one subject folder in the given layout.

    Args:
        folder: subject folder to create (e.g. ``raw/s0001``); must not exist yet.
        layout: ``"v2"`` (multi-label ``seg.nii.gz``) or ``"v1"`` (``segmentations/<structure>.nii.gz``).
        example: folder of the real example (default :func:`example_dir`).

    Returns:
        The subject folder.
    """
    from xray3d.data.sources.totalseg import TASK_STRUCTURES, TOTALSEG_V2_IDS

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    src = Path(example) if example is not None else example_dir()
    ct, seg = require_file(src / "example_ct.nii.gz"), require_file(src / "example_seg.nii.gz")
    folder = Path(folder)
    if layout == "v2":
        folder.mkdir(parents=True)
        shutil.copy(ct, folder / "ct.nii.gz")
        shutil.copy(seg, folder / "seg.nii.gz")
        return folder
    (folder / "segmentations").mkdir(parents=True)
    shutil.copy(ct, folder / "ct.nii.gz")
    img = nib.load(seg)
    labels = np.asarray(img.dataobj)
    names = sorted({n for names in TASK_STRUCTURES.values() for n in names})
    for name in names:
        mask = nib.Nifti1Image((labels == TOTALSEG_V2_IDS[name]).astype(np.uint8), img.affine)
        nib.save(mask, folder / "segmentations" / f"{name}.nii.gz")
    return folder


def write_totalseg_fixture(
    raw_dir: str | Path,
    layout: str = "v2",
    n_subjects: int = 1,
    first_id: int = 1,
    example: Path | None = None,
) -> list[Path]:
    """Write ``n_subjects`` subject folders ``s{first_id:04d}...`` (copies of the real example).

    The first subject of the requested layout is built once; the others are file copies of it (fast).

    Args:
        raw_dir: raw dataset folder (created if missing).
        layout: ``"v1"`` or ``"v2"`` (see :func:`write_totalseg_subject`).
        n_subjects: number of subject folders.
        first_id: number of the first subject.
        example: folder of the real example (default :func:`example_dir`).

    Returns:
        The subject folders, in order.
    """
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n_subjects}")
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    first = write_totalseg_subject(raw_dir / f"s{first_id:04d}", layout, example)
    folders = [first]
    for i in range(first_id + 1, first_id + n_subjects):
        folders.append(Path(shutil.copytree(first, raw_dir / f"s{i:04d}")))
    return folders
