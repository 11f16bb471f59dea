"""Surface meshes of predicted (or ground-truth) volumes in world millimetres."""

from __future__ import annotations

import numpy as np
import trimesh
from skimage.measure import marching_cubes

__all__ = ["volume_to_mesh"]


def volume_to_mesh(
    volume: np.ndarray, affine: np.ndarray, level: float = 0.5, smoothing_iterations: int = 0
) -> trimesh.Trimesh | None:
    """Marching cubes of ``volume`` at ``level``, in the world frame of ``affine`` (mm).

    The volume is padded by one voxel below ``level`` on every side, so a bone touching the grid's border
    still gives a closed (watertight) surface, through the grid's outer faces. Optional Taubin smoothing
    (``smoothing_iterations`` > 0) removes the voxel staircase without the shrinkage of plain Laplacian
    smoothing.

    Args:
        volume: 3D probability (or binary mask) on a voxel grid.
        affine: 4x4 voxel-to-world matrix (mm).
        level: iso-value (0.5: the surface where the probability crosses the threshold).
        smoothing_iterations: Taubin iterations (0 = none).

    Returns:
        The mesh with outward normals, or None when nothing reaches ``level``.
    """
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3:
        raise ValueError(f"volume must be 3D, got shape {vol.shape}")
    if smoothing_iterations < 0:
        raise ValueError(f"smoothing_iterations must be >= 0, got {smoothing_iterations}")
    if not (vol > level).any():
        return None
    # Pad with the border values mirrored about ``level``: a border voxel above the level then crosses it
    # exactly on the grid's outer face, where its voxel ends, so the closed surface of a bone cut by the
    # grid encloses the same volume as its voxels (a zero pad would cut half a voxel layer off).
    padded = np.pad(vol, 1, mode="edge")
    padded = np.minimum(padded, 2.0 * level - padded)
    padded[1:-1, 1:-1, 1:-1] = vol
    verts, faces, _, _ = marching_cubes(padded, level=level, allow_degenerate=False)
    verts_world = (np.asarray(affine, dtype=np.float64) @ np.c_[verts - 1.0, np.ones(len(verts))].T)[:3].T
    mesh = trimesh.Trimesh(vertices=verts_world, faces=faces, process=True)
    mesh.fix_normals()  # skimage's winding is inverted in trimesh's convention (negative volume)
    if smoothing_iterations:
        trimesh.smoothing.filter_taubin(mesh, iterations=int(smoothing_iterations))
    return mesh
