"""Small file breakers shared by the preparer tests."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np


def shift_nifti_origin(path: Path, mm: float) -> None:
    """Rewrite a NIfTI with its origin moved by ``mm`` on every axis (same voxels: a misregistered mask).

    The voxels are copied first: a plain ``.nii`` is memory-mapped from the file being overwritten.
    """
    img = nib.load(path)
    aff = img.affine.copy()
    aff[:3, 3] += mm
    nib.save(nib.Nifti1Image(np.array(img.dataobj), aff), path)
