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


def load_nifti(path: str | Path, what: str = "image") -> nib.Nifti1Image:
    """Load a NIfTI file fully into memory, turning every failure into a :class:`DataError`.

    Args:
        path: file to read.
        what: a word for the message ("CT", "mask").

    Returns:
        The image with its data already read (so truncated files fail here, not later).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file not found: {path}. Re-run the preparation step or fix the path.")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types (EOFError, zlib.error, ImageFileError, ...)
        raise DataError(
            f"{what} file {path} cannot be read ({type(exc).__name__}: {exc}); it is corrupt or truncated. "
            "Delete it and re-run the preparation step."
        ) from exc
    return nib.Nifti1Image(data, img.affine, img.header)


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
