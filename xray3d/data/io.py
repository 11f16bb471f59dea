"""NIfTI I/O with clear errors and atomic writes."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

__all__ = [
    "DataError",
    "load_nifti",
    "save_nifti_atomic",
    "write_text_atomic",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_csv_atomic",
]


class DataError(ValueError):
    """A data file is missing, corrupt or inconsistent; the message names the file and the fix."""


def load_nifti(path: str | Path, what: str = "image", raw: bool = False) -> nib.Nifti1Image:
    """Load a NIfTI file fully into memory, turning every failure into a :class:`DataError`.

    The message says what is wrong with the file (empty, an uncompressed NIfTI named ``.nii.gz``, a
    truncated gzip stream, not a NIfTI at all) and what to do about it: for a raw input (``raw=True``) how
    to fix or re-obtain it, for a file xray3d wrote, to delete it and re-run the preparation step.

    Args:
        path: file to read.
        what: a word for the message ("CT", "mask").
        raw: the file is a raw dataset input (a download), not an output of the preparation.

    Returns:
        The image with its data already read (so truncated files fail here, not later).
    """
    path = Path(path)
    if not path.is_file():
        fix = (
            "Check the raw folder or fix the path." if raw else "Re-run the preparation step or fix the path."
        )
        raise DataError(f"{what} file not found: {path}. {fix}")
    problem = _nifti_file_problem(path)
    if problem is not None:
        raise DataError(f"{what} file {path}: {problem[0]}; {problem[1] if raw else _REDO}")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types (EOFError, zlib.error, ImageFileError, ...)
        fix = "download or extract it again" if raw else _REDO
        raise DataError(
            f"{what} file {path} cannot be read ({type(exc).__name__}: {exc}); it is corrupt or truncated: "
            f"{fix}"
        ) from exc
    return nib.Nifti1Image(data, img.affine, img.header)


_REDO = "Delete it and re-run the preparation step."
_GZIP_MAGIC = b"\x1f\x8b"
_NIFTI1_MAGICS = (b"n+1\x00", b"ni1\x00")  # at byte 344 of a NIfTI-1 header
_NIFTI2_MAGIC = b"n+2\x00"  # at byte 4 of a NIfTI-2 header


def _nifti_file_problem(path: Path) -> tuple[str, str] | None:
    """What is wrong with a NIfTI file that can be told from its first bytes, and how to fix a raw one.

    Returns:
        ``(problem, fix for a raw input)``, or None when the file looks like what its name says.
    """
    size = path.stat().st_size
    if size == 0:
        return "the file is empty (0 bytes)", "the download or extraction stopped early: fetch the file again"
    with open(path, "rb") as fh:
        head = fh.read(352)
    gz_name = path.name.lower().endswith(".gz")
    gzipped = head[:2] == _GZIP_MAGIC
    nifti = head[344:348] in _NIFTI1_MAGICS or head[4:8] == _NIFTI2_MAGIC
    if gz_name and not gzipped and nifti:
        return (
            "uncompressed NIfTI named .nii.gz",
            f"rename it to {path.name[:-3]} (or gzip it) and run again",
        )
    if not gz_name and gzipped:
        return "gzip-compressed file without a .gz suffix", f"rename it to {path.name}.gz and run again"
    if not gzipped and not nifti:
        return (
            f"not a NIfTI file (no NIfTI header; {size} bytes)",
            "replace it with the NIfTI file the dataset ships",
        )
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: mode of the files xray3d writes: what ``open()`` would give (0666 minus the umask), not mkstemp's 0600
FILE_MODE = 0o666 & ~_umask()


def _atomic_target(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{suffix}", dir=path.parent)
    os.fchmod(fd, FILE_MODE)  # readable by colleagues like any other result file
    return fd, tmp


def save_nifti_atomic(img: nib.Nifti1Image, path: str | Path) -> None:
    """Write a NIfTI file via a temporary file and ``os.replace`` (never a half-written file)."""
    path = Path(path)
    fd, tmp = _atomic_target(path)
    os.close(fd)
    try:
        nib.save(img, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes_atomic(data: bytes, path: str | Path) -> None:
    """Write a binary file (e.g. a PNG) atomically."""
    path = Path(path)
    fd, tmp = _atomic_target(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(text: str, path: str | Path) -> None:
    """Write a UTF-8 text file atomically."""
    write_bytes_atomic(text.encode("utf-8"), path)


def write_json_atomic(obj: Any, path: str | Path) -> None:
    """Write JSON atomically (NaN/inf become null-safe strings via ``default=str``)."""
    write_text_atomic(json.dumps(obj, indent=2, default=str, allow_nan=True) + "\n", path)


def write_csv_atomic(df: pd.DataFrame, path: str | Path) -> None:
    """Write a CSV atomically."""
    write_text_atomic(df.to_csv(index=False), path)
