"""Surface distances of two binary masks, as DeepMind surface-distance defines them, computed faster.

:func:`surface_distances` returns exactly what ``surface_distance.compute_surface_distances`` returns
(same surfels, same surfel areas from the library's own lookup table, same distances, same order), so
every metric of the library (``compute_robust_hausdorff``, ``compute_average_surface_distance``,
``compute_surface_dice_at_tolerance``, ``compute_surface_overlap_at_tolerance``) takes its output
unchanged. Three steps differ, all exact:

* the distance from each border voxel of one mask to the nearest border voxel of the other (by
  definition the value of the library's Euclidean distance transform there) is 0 where both masks have
  that border voxel; else it is looked up on the voxel lattice, trying the offsets within 3 x the
  smallest spacing nearest first (the first hit is the nearest: every voxel outside that ball is
  farther); only the voxels with nothing in the ball get a nearest-neighbour query in a k-d tree
  (``scipy.spatial.cKDTree``) over the border voxels' positions in mm. No distance transform of the
  whole cropped volume is computed. On the real femur a prediction 1-2 voxels off takes 3-4x less time
  than with the k-d tree alone, one 8-16 voxels off about 15 % more;
* the (distance, area) pairs are sorted with ``numpy.lexsort`` instead of Python's ``sorted`` over
  tuples;
* the 2x2x2 neighbourhood codes are 8 shifted additions instead of a generic ``ndimage.correlate``.

The library version spends most of its time in those steps (on a real femur at 128³ and 1 mm and a
prediction 2 voxels off, 0.15 s for the library vs 0.018 s here: ``experiments/benchmarks/
eval_per_case.py``). ``tests/metrics/test_surface.py``
checks equality with the library on random, real and anisotropic masks.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from scipy.spatial import cKDTree
from surface_distance import lookup_tables

__all__ = ["foreground_ranges", "surface_distances"]

_FULL = 0b11111111
#: voxels (x the smallest spacing) searched on the lattice before the k-d tree (see ``surface_distances``)
_LATTICE_RADIUS = 3


def _neighbour_codes(mask: np.ndarray, bbox: tuple[slice, ...], shape: tuple[int, ...]) -> np.ndarray:
    """2x2x2 neighbourhood code of every voxel corner of the crop (the library's encoding).

    Equal to the library's ``ndimage.correlate(crop, ENCODE_NEIGHBOURHOOD_3D_KERNEL, mode="constant")``
    (a 2x2x2 kernel reads the voxel and its predecessors along each axis), as 8 shifted additions, which
    is about 9x faster than the generic correlation.
    """
    crop = np.zeros(shape, np.uint8)
    crop[:-1, :-1, :-1] = mask[bbox]
    padded = np.pad(crop, ((1, 0), (1, 0), (1, 0)))
    codes = np.zeros(shape, np.uint8)
    kernel = lookup_tables.ENCODE_NEIGHBOURHOOD_3D_KERNEL
    for (a, b, c), weight in np.ndenumerate(kernel):
        view = padded[a : a + shape[0], b : b + shape[1], c : c + shape[2]]
        codes += view * np.uint8(weight)
    return codes


@functools.lru_cache(maxsize=32)
def _ball_offsets(spacing_mm: tuple[float, float, float], radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Voxel offsets (K, 3) no farther than ``radius`` x the smallest spacing, nearest first, and their
    lengths in mm (computed as the distances of :func:`surface_distances` are)."""
    r = np.arange(-radius, radius + 1)
    grid = np.stack(np.meshgrid(r, r, r, indexing="ij"), axis=-1).reshape(-1, 3)
    grid = grid[np.any(grid != 0, axis=1)]
    phys = grid * np.asarray(spacing_mm, dtype=float)
    length = np.sqrt(np.add.reduce(phys * phys, axis=1))
    keep = length <= radius * min(spacing_mm)
    order = np.argsort(length[keep], kind="stable")
    return grid[keep][order], length[keep][order]


def _nearest_by_lattice(
    src: np.ndarray, dst_volume: np.ndarray, spacing: np.ndarray, radius: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact distance (mm) from each ``src`` voxel to the nearest foreground voxel of ``dst_volume`` when
    one lies within ``radius`` x the smallest spacing: the offsets of that ball are tried nearest first
    (every voxel outside the ball is farther).

    Returns:
        (distances, NaN where none was found; indices of the ``src`` rows with none in the ball).
    """
    offsets, lengths = _ball_offsets(tuple(float(v) for v in spacing), radius)
    padded = np.pad(dst_volume, radius).ravel()
    shape = np.array(dst_volume.shape) + 2 * radius
    strides = np.array([shape[1] * shape[2], shape[2], 1])
    flat = (src + radius) @ strides
    out = np.full(len(src), np.nan)
    pending = np.arange(len(src))
    for step, length in zip(offsets @ strides, lengths, strict=True):
        hit = padded[flat[pending] + step]
        if hit.any():
            out[pending[hit]] = length
            pending = pending[~hit]
            if len(pending) == 0:
                break
    return out, pending


@functools.lru_cache(maxsize=32)
def _area_table(spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """The library's surfel area of each of the 256 neighbourhood codes at this spacing (cached)."""
    return lookup_tables.create_table_neighbour_code_to_surface_area(spacing_mm)


def foreground_ranges(mask: np.ndarray) -> list[np.ndarray]:
    """Indices along each axis of a 3D mask where it has foreground (two passes, no temporary volume)."""
    plane = mask.any(axis=0)
    return [np.nonzero(mask.any(axis=(1, 2)))[0], np.nonzero(plane.any(1))[0], np.nonzero(plane.any(0))[0]]


def _sorted(distances: np.ndarray, areas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays in the order of (distance, area), as the library's ``sorted`` over pairs.

    The zero distances (border voxels both masks share, most of them for a good prediction) come first
    with their areas sorted; only the others need the two-key sort.
    """
    zero = distances == 0
    if not zero.any():
        order = np.lexsort((areas, distances))
        return distances[order], areas[order]
    rest = ~zero
    d_rest, a_rest = distances[rest], areas[rest]
    order = np.lexsort((a_rest, d_rest))
    return (
        np.concatenate([distances[zero], d_rest[order]]),
        np.concatenate([np.sort(areas[zero]), a_rest[order]]),
    )


def surface_distances(
    mask_gt: np.ndarray, mask_pred: np.ndarray, spacing_mm: Sequence[float]
) -> dict[str, np.ndarray]:
    """Distances (mm) from every surfel of each mask to the other mask's surface, with the surfel areas.

    Args:
        mask_gt: boolean 3D ground-truth mask.
        mask_pred: boolean 3D predicted mask, same shape.
        spacing_mm: voxel size along the three array axes.

    Returns:
        ``{"distances_gt_to_pred", "distances_pred_to_gt", "surfel_areas_gt", "surfel_areas_pred"}``,
        each 1D and sorted by (distance, area), as ``surface_distance.compute_surface_distances``. A mask
        without surface gives empty arrays for itself and ``inf`` distances for the other.

    Raises:
        ValueError: masks that are not boolean 3D arrays of one shape, or a spacing of the wrong length.
    """
    for name, m in (("mask_gt", mask_gt), ("mask_pred", mask_pred)):
        if not isinstance(m, np.ndarray) or m.dtype != bool or m.ndim != 3:
            raise ValueError(f"{name} must be a boolean 3D numpy array, got {type(m).__name__}")
    if mask_gt.shape != mask_pred.shape or len(spacing_mm) != 3:
        raise ValueError(
            f"masks {mask_gt.shape} and {mask_pred.shape} must have one 3D shape and spacing_mm 3 values, "
            f"got {spacing_mm}"
        )
    empty = np.array([])
    # bounding box of the union, from each mask's projections
    ranges = [
        np.union1d(a, b)
        for a, b in zip(foreground_ranges(mask_gt), foreground_ranges(mask_pred), strict=True)
    ]
    if len(ranges[0]) == 0:
        return {
            k: empty
            for k in ("distances_gt_to_pred", "distances_pred_to_gt", "surfel_areas_gt", "surfel_areas_pred")
        }
    bbox = tuple(slice(int(r[0]), int(r[-1]) + 1) for r in ranges)
    shape = tuple(int(r[-1] - r[0]) + 2 for r in ranges)
    area_table = _area_table(tuple(float(v) for v in spacing_mm))
    spacing = np.asarray(spacing_mm, dtype=float)

    codes = [_neighbour_codes(mask, bbox, shape) for mask in (mask_gt, mask_pred)]
    borders = [(c != 0) & (c != _FULL) for c in codes]
    idx_gt, idx_pred = (np.argwhere(b) for b in borders)
    areas_gt, areas_pred = (area_table[c[b]] for c, b in zip(codes, borders, strict=True))

    def directed(src: np.ndarray, dst: np.ndarray, dst_volume: np.ndarray, shared: np.ndarray) -> np.ndarray:
        """Distance of each ``src`` border voxel to the nearest ``dst`` one (0 where both masks have it)."""
        if len(src) == 0:
            return empty
        if len(dst) == 0:
            return np.full(len(src), np.inf)
        out = np.zeros(len(src))
        todo = np.flatnonzero(~shared)
        if len(todo):
            # most voxels have a nearest one within a few voxels: look there first, on the lattice
            out[todo], far = _nearest_by_lattice(src[todo], dst_volume, spacing, _LATTICE_RADIUS)
            far = todo[far]
            if len(far):
                tree = cKDTree(dst * spacing, balanced_tree=False, compact_nodes=False)
                nearest = tree.query(src[far] * spacing, workers=-1)[1]
                # the distance recomputed from integer offsets, in the order scipy's EDT sums them, so
                # ties between equally near voxels give bit-identical values (and the same sort order)
                offset = (src[far] - dst[nearest]) * spacing
                out[far] = np.sqrt(np.add.reduce(offset * offset, axis=1))
        return out

    # border voxels present in both masks are at distance 0 (most of them, for a good prediction)
    d_gt, a_gt = _sorted(directed(idx_gt, idx_pred, borders[1], borders[1][borders[0]]), areas_gt)
    d_pred, a_pred = _sorted(directed(idx_pred, idx_gt, borders[0], borders[0][borders[1]]), areas_pred)
    return {
        "distances_gt_to_pred": d_gt,
        "distances_pred_to_gt": d_pred,
        "surfel_areas_gt": a_gt,
        "surfel_areas_pred": a_pred,
    }
