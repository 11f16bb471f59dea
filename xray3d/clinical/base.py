"""Common contract of the clinical-parameter measurements (femur, hip, vertebra, rib).

Every anatomy module exposes ``measure(mask, affine, **options) -> dict`` that works on a binary mask in
physical units and never returns silent NaNs: when it cannot measure it raises :class:`ClinicalError`
with a reason a user can act on. Result keys carry their unit:

* ``<name>_mm`` / ``<name>_deg`` / ``<name>_mm2``: scalars (lengths in mm, angles in degrees);
* ``<name>_xyz_mm``: a point, ``[x, y, z]`` in the mask file's world coordinates (mm, the NIfTI affine's
  frame, i.e. RAS+ for a NIfTI).

:func:`clinical_errors` turns a ground-truth and a predicted measurement into per-parameter errors as in
the reference benchmark (absolute differences; Euclidean distance for points).

Conventions (:data:`CONVENTIONS`), as the image metrics have them: ``xray3d`` (the default) uses this
project's definitions; ``reference`` reproduces the reference morphometry's definitions where they differ
(vertebra line trimming and spa, the hip's single-pass frame and split height; see docs/evaluation.md).
An anatomy module takes ``convention=`` and checks it with :func:`check_convention`. It is set by
``convention:`` in ``conf/clinical/<anatomy>.yaml`` (Hydra: ``data.clinical.convention=reference``, the
clinical group sits under ``data``) or ``xray3d-measure --convention``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

__all__ = [
    "CONVENTIONS",
    "ClinicalError",
    "ConventionError",
    "check_convention",
    "POINT_SUFFIX",
    "UNITS",
    "clinical_errors",
    "index_points_mm",
    "validate_mask",
    "voxel_points_mm",
]

POINT_SUFFIX = "_xyz_mm"
#: units of the scalar parameters that get an error (counts such as ``n_ribs`` are compared as columns only)
UNITS = ("mm", "deg", "mm2", "mm3")


#: clinical conventions: this project's definitions (default) and the reference morphometry's
CONVENTIONS = ("xray3d", "reference")


class ClinicalError(ValueError):
    """A clinical parameter cannot be measured on this mask; the message says why."""


class ConventionError(ValueError):
    """An unknown clinical convention was asked for (a configuration error, not a failed measurement)."""


def check_convention(
    convention: str, option: str = "data.clinical.convention", valid: tuple[str, ...] = CONVENTIONS
) -> str:
    """Return ``convention`` if it is one of ``valid``; raise :class:`ConventionError` naming ``option``.

    Args:
        convention: the requested convention.
        option: the configuration option or command-line flag that set it (used in the message).
        valid: the conventions this anatomy supports.
    """
    if convention not in valid:
        raise ConventionError(
            f"{option}={convention!r} is not a known clinical convention; valid values: {', '.join(valid)}"
        )
    return convention


def validate_mask(
    mask: np.ndarray, affine: np.ndarray, min_voxels: int = 1, what: str = "mask"
) -> np.ndarray:
    """Check a mask and its affine; return the mask as a boolean array.

    Args:
        mask: 3D array; non-zero = bone. Float masks must be finite.
        affine: 4x4 voxel-to-world matrix (mm).
        min_voxels: fewer foreground voxels than this is a :class:`ClinicalError`.
        what: name used in messages.

    Raises:
        ClinicalError: wrong dimensionality, NaNs, a singular affine, or too few voxels.
    """
    mask = np.asarray(mask)
    affine = np.asarray(affine, dtype=float)
    if mask.ndim != 3:
        raise ClinicalError(f"{what} must be 3D, got shape {mask.shape}")
    if affine.shape != (4, 4) or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise ClinicalError(f"{what} has an invalid affine (need a finite, non-singular 4x4 matrix)")
    if mask.dtype.kind == "f" and not np.isfinite(mask).all():
        raise ClinicalError(f"{what} contains NaN/inf values")
    binary = mask > 0.5 if mask.dtype.kind == "f" else mask != 0
    n = int(binary.sum())
    if n < min_voxels:
        raise ClinicalError(f"{what} has {n} foreground voxels (empty or too small; need >= {min_voxels})")
    return binary


def index_points_mm(idx: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World coordinates (mm) of voxel indices ``idx`` (N, 3), shape (N, 3)."""
    affine = np.asarray(affine, dtype=float)
    return np.asarray(idx, dtype=float) @ affine[:3, :3].T + affine[:3, 3]


def voxel_points_mm(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World coordinates (mm) of the centres of the mask's foreground voxels, shape (N, 3)."""
    return index_points_mm(np.argwhere(mask), affine)


def _unit(key: str) -> str:
    return key.rsplit("_", 1)[-1]


def clinical_errors(gt: Mapping[str, object], pred: Mapping[str, object]) -> dict[str, float]:
    """Per-parameter error between two measurements of the same anatomy.

    Scalars with a unit of :data:`UNITS` give ``<name>_err_<unit>`` = |pred - gt|; points
    (``<name>_xyz_mm``) give ``<name>_err_mm`` = Euclidean distance (same world frame, no alignment).
    Keys present in only one of the two, or non-finite values, are skipped.
    """
    errors: dict[str, float] = {}
    for key, g in gt.items():
        if key not in pred:
            continue
        p = pred[key]
        if key.endswith(POINT_SUFFIX):
            g_arr, p_arr = np.asarray(g, dtype=float), np.asarray(p, dtype=float)
            ok = g_arr.shape == (3,) and p_arr.shape == (3,)
            if not (ok and np.isfinite(g_arr).all() and np.isfinite(p_arr).all()):
                continue
            errors[f"{key[: -len(POINT_SUFFIX)]}_err_mm"] = float(np.linalg.norm(p_arr - g_arr))
        elif isinstance(g, (int, float)) and isinstance(p, (int, float)) and _unit(key) in UNITS:
            if math.isfinite(g) and math.isfinite(p):
                unit = _unit(key)
                errors[f"{key[: -len(unit) - 1]}_err_{unit}"] = float(abs(float(p) - float(g)))
    return errors
