"""Clinical parameters measured automatically on bone masks (mm, degrees, world coordinates)."""

from xray3d.clinical.base import ClinicalError, clinical_errors, validate_mask, voxel_points_mm

__all__ = ["ClinicalError", "clinical_errors", "validate_mask", "voxel_points_mm"]
