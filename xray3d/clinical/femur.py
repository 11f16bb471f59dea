"""Proximal-femur morphometry measured automatically on a binary mask (no manual annotation).

Reference (benchmark spec section 6.1, after Cerveri et al. 2010): a hand-cut subtrochanteric plane gives
the diaphysis axis (CMA-ES minimum cross-section), the vertex farthest from it is the head tip, a sphere
is fitted to the cut contours of 50 planes near the tip, and a second CMA-ES minimum cross-section gives
the neck axis. Here every step is derived from the mask alone, in world millimetres, and is vectorised:

1. **Cleaning.** Small 26-connected fragments are dropped (counted in ``fragments_removed``); a second
   large fragment is an error; enclosed cavities are filled. The mask is cropped to its bounding box.
2. **Cut faces.** A face of the bone's bounding box is a cut when it lies on the array border or is a flat
   patch (a rounded end is not); the voxels of its two outer layers are marked, and any cross section
   that holds one is incomplete. This is what lets an ROI cut the shaft obliquely.
3. **Head end.** Whichever end it is at (a whole femur, head to condyles, or a proximal ROI, in any
   orientation): the local maxima of the Euclidean distance transform (EDT, on a grid of <= 2 mm) are
   the thick parts; a sphere is fitted to the surface around each and the head is the one whose surface
   covers most of its sphere (the condyles, trochanters and a cut shaft end cover far less).
4. **Diaphysis axis** (replaces the manual subtrochanteric plane and CMA-ES). Start directions: the tube
   axis of the surface normals 40-160 mm beyond the head sphere, away from the cut faces (smallest
   eigenvector of sum(n n^T)), else head centre to the centroid of that bone. Iterated: 1 mm (one voxel)
   sections perpendicular to the axis, from the head sphere on; a section counts when it is complete
   and its centroid lies >= half a head radius from the line through the head centre (so never the
   neck); areas by linear binning and a 5 mm mean over counted sections (1 mm bins on a voxel grid
   flicker by up to 25 % along a diagonal). The shaft's reference area is the smallest median of
   ``min_shaft_mm`` of sections within 1.25x of each other (the diaphysis is the narrowest part below
   the neck); the shaft is the most proximal run of sections within 1.25x of it. Its proximal 15 %
   (flare) is left out and at most ``max_shaft_mm`` used (a whole femur gives its proximal diaphysis, as
   the ROI does). Axis = a robust (Tukey) weighted line through the section centroids, first of the whole
   sections, then of their thick cores (depth >= 0.7 shaft radius), which a lesser trochanter does not
   shift. A run shorter than ``min_shaft_mm`` is an error that gives its length.
5. **Femoral head.** A robust geometric sphere fit (Tukey IRLS) on voxel-face surface points in a
   shrinking band around the current sphere, excluding a cone around the neck direction (head-neck
   junction), gives ``head_centre_xyz_mm`` and ``head_radius_mm``.
6. **Neck axis.** Slices perpendicular to the head-centre-to-neck direction, restricted to a cylinder of
   radius 1.1x the head radius (so the trochanters do not count); the narrowest slices (area within 5 %
   of the minimum) give the neck centre; the axis is the line from the head centre through it (the
   radiographic definition), iterated 4 times; the search stops at the diaphysis axis. The reference
   uses the normal of a CMA-ES minimum-area plane instead, which is noisier on voxel masks.
7. **Parameters.** NSA = angle between the neck axis (towards the head) and the distal diaphysis
   direction, folded to >= 90 deg as in the reference; femoral offset = distance from the head centre to
   the diaphysis axis; axis angles to the world x/y/z axes are folded to 0-90 deg (axes are undirected).
   Sanity checks: plausible head radius, >= 75 % of the head surface within 2 mm of the sphere (holes),
   head inside the field of view, a neck constriction, an offset >= 0.75x the head radius, and the shaft
   direction from the surface normals of the sections used (away from cut faces) within 10 deg of the
   centroid axis (reported as ``diaphysis_axis_disagreement_deg``).
   Known-answer phantoms (``xray3d.testing.femur_phantoms``, tests/clinical/test_femur.py): femurs tilted
   0-45 deg in a 128 mm ROI that cuts the shaft obliquely, isotropic and anisotropic, are measured within
   2 deg NSA, 0.5 mm radius and 1 mm head centre, or fail with the (true) shaft length when the ROI
   leaves too little; whole femurs give their proximal ROI's result. The NSA rests on the shaft in the
   field of view: the real s0015 femur's 128 mm ROI ends just below the lesser trochanter (a 24 mm run,
   still tapering), so read ``diaphysis_length_mm`` with it (the reference's hand-cut subtrochanteric
   plane has the same limit).

Anatomical ranges used by the tests (adults, stated conservatively): neck-shaft angle 115-145 deg
(population means about 120-135 deg: Gilligan, Chandraphak & Mahakkanukrauh 2013, J Anat 223:133-151;
Boese et al. 2016, Skeletal Radiol 45:19-28, systematic review), femoral head diameter 38-58 mm (radius
19-29 mm) and femoral offset 25-55 mm (Noble et al. 1988, Clin Orthop Relat Res 235:148-165; Lecerf et
al. 2009, Orthop Traumatol Surg Res 95:210-219).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from xray3d.clinical.base import ClinicalError, index_points_mm, validate_mask
from xray3d.clinical.geometry import (
    axis_angles_deg,
    boundary_voxels,
    clean_components,
    crop_to_foreground,
    fit_line,
    fit_sphere,
    point_line_distance,
    surface_points_mm,
    unit,
    voxel_spacing,
)

__all__ = ["measure"]


def _slice_index(
    points: np.ndarray, origin: np.ndarray, direction: np.ndarray, width: float
) -> tuple[np.ndarray, np.ndarray]:
    """Slices of thickness ``width`` along ``direction``, from the smallest projection of the points.

    Returns (slice index of every point, voxel count per slice).
    """
    t = (points - origin) @ direction
    k = np.floor((t - float(t.min())) / width).astype(int)
    return k, np.bincount(k).astype(float)


def _slice_centroids(
    points: np.ndarray, k: np.ndarray, counts: np.ndarray, first: int = 0, stop: int | None = None
) -> np.ndarray:
    """Centroids (K, 3) of the slices ``first`` to ``stop - 1`` (the others are left at 0)."""
    n = len(counts)
    if first > 0 or (stop is not None and stop < n):  # the same per-slice sums, over those points only
        keep = (k >= first) & (k < (n if stop is None else stop))
        k, points = k[keep], np.compress(keep, points, axis=0)
    sums = np.stack([np.bincount(k, weights=points[:, i], minlength=n) for i in range(3)], axis=1)
    return sums / np.maximum(counts, 1)[:, None]


def _slice_stats(
    points: np.ndarray, origin: np.ndarray, direction: np.ndarray, width: float, voxel_volume: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cross sections of a voxel point cloud along ``direction``: (areas mm^2, centroids (K, 3), voxel
    counts) of slices of thickness ``width`` starting at the smallest projection."""
    k, counts = _slice_index(points, origin, direction, width)
    return counts * voxel_volume / width, _slice_centroids(points, k, counts), counts


def _surface_normals(mask: np.ndarray, idx: np.ndarray, affine: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """Unit world normals at voxels ``idx`` (N, 3): the gradient of the mask smoothed by a Gaussian.

    Only the sub-box the voxels need is smoothed (the Gaussian reaches ``round(4 sigma)`` voxels, the
    central difference one more), so the values equal smoothing the whole mask. Rows with a null
    gradient are NaN. The mask must have at least 2 voxels of background padding.
    """
    reach = int(4.0 * sigma + 0.5) + 1
    lo = np.maximum(idx.min(0) - reach, 0)
    hi = np.minimum(idx.max(0) + reach + 1, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    smooth = ndimage.gaussian_filter(mask[box].astype(np.float32), sigma)
    local = idx - lo
    grad = np.empty((len(idx), 3))
    for axis in range(3):
        hi_i, lo_i = local.copy(), local.copy()
        hi_i[:, axis] += 1
        lo_i[:, axis] -= 1
        grad[:, axis] = smooth[tuple(hi_i.T)] - smooth[tuple(lo_i.T)]
    normals = grad @ np.linalg.inv(affine[:3, :3])
    norm = np.linalg.norm(normals, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm[:, None] > 1e-9, normals / norm[:, None], np.nan)


def _cut_faces(
    crop: np.ndarray, offset: np.ndarray, full_shape: tuple[int, ...], spacing: np.ndarray
) -> list[tuple[int, int, int]]:
    """Faces of the bone's bounding box where the bone is cut (by the ROI border or a flat cut).

    A face is a cut when it lies on the border of the original array (within one voxel), or when its
    outermost layer of voxels is a flat patch: at least 25 mm^2 and at least half the area of the layer
    two voxels in (a rounded end such as the head or a condyle gives about a fifth).

    Args:
        crop: cleaned, cropped mask.
        offset: index in the original array of the crop's voxel (0, 0, 0).
        full_shape: shape of the original array.
        spacing: voxel size (mm) along each array axis.

    Returns:
        (array axis, index of the outermost layer in the crop, +1 for the low face / -1 for the high one).
    """
    faces = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        profile = crop.sum(axis=others)
        layers = np.nonzero(profile)[0]
        face_mm2 = float(np.prod(spacing[list(others)]))
        for step, layer in ((1, int(layers[0])), (-1, int(layers[-1]))):
            inner = int(np.clip(layer + 2 * step, layers[0], layers[-1]))
            full_index = layer + int(offset[axis])
            at_border = full_index <= 1 or full_index >= full_shape[axis] - 2
            flat = profile[layer] * face_mm2 >= 25.0 and profile[layer] >= 0.5 * profile[inner]
            if at_border or flat:
                faces.append((axis, layer, step))
    return faces


def _near_faces(idx: np.ndarray, faces: list[tuple[int, int, int]], depth: int | np.ndarray) -> np.ndarray:
    """True for the voxel indices ``idx`` (N, 3) within ``depth`` layers of a cut face (one number, or
    one per array axis so that an anisotropic grid keeps the same depth in mm on every face)."""
    depth_axis = np.broadcast_to(np.asarray(depth), (3,))
    near = np.zeros(len(idx), dtype=bool)
    for axis, layer, step in faces:
        near |= step * (idx[:, axis] - layer) < depth_axis[axis]
    return near


def _fibonacci_directions(n: int = 256) -> np.ndarray:
    """``n`` unit vectors spread evenly over the sphere (Fibonacci lattice)."""
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    phi = np.pi * (1.0 + 5.0**0.5) * i
    rho = np.sqrt(1.0 - z * z)
    return np.c_[rho * np.cos(phi), rho * np.sin(phi), z]


_DIRECTIONS = _fibonacci_directions()


def _sphere_coverage(surface: np.ndarray, centre: np.ndarray, radius: float, tol_mm: float) -> float:
    """Fraction of a sphere's directions (256 even bins) where the surface lies within ``tol_mm`` of it."""
    rel = surface - centre
    dist = np.sqrt(np.einsum("ij,ij->i", rel, rel))
    near = np.abs(dist - radius) < tol_mm
    if not near.any():
        return 0.0
    dirs = rel[near] / dist[near, None]
    return float(len(np.unique(np.argmax(dirs @ _DIRECTIONS.T, axis=1)))) / len(_DIRECTIONS)


def _fit_ball(
    surface: np.ndarray, centre: np.ndarray, radius: float, h: float
) -> tuple[np.ndarray, float] | None:
    """Sphere fitted to the surface points in a shrinking band around a starting ball (None: too few)."""
    band = max(3.0, 0.25 * radius)
    c, r = centre, radius
    rel = surface - centre
    pts = np.compress(np.sqrt(np.einsum("ij,ij->i", rel, rel)) < radius + band + 10.0, surface, axis=0)
    for _ in range(5):
        dist = np.linalg.norm(pts - c, axis=1)
        sel = np.abs(dist - r) < band
        if sel.sum() < 50:
            return None
        c, r, _ = fit_sphere(np.compress(sel, pts, axis=0), c, r, min_scale=0.3 * h, tol_mm=1e-2)
        if not (np.all(np.isfinite(c)) and r > 0.0):
            return None
        band = max(1.5, 1.5 * h, 0.6 * band)
    return c, float(r)


def _find_head(
    edt: np.ndarray,
    step: np.ndarray,
    spacing: np.ndarray,
    affine: np.ndarray,
    surface: np.ndarray,
    h: float,
    radius_range_mm: tuple[float, float],
    max_candidates: int = 8,
) -> tuple[np.ndarray, float, float]:
    """The femoral head: the most spherical of the thick parts of the bone, whichever end it is at.

    Candidates are the local maxima of the distance transform ``edt`` (computed on the crop subsampled
    by ``step`` voxels per axis) of at least half its maximum, 15 mm apart; a sphere is fitted to the
    surface around each, and the head is the one whose surface covers most of its sphere
    (:func:`_sphere_coverage`). The knee's condyles, the trochanters and a cut shaft end cover far less
    of a sphere than the head.

    Returns:
        (centre mm, radius mm, coverage fraction).
    """
    size = tuple(int(v) for v in np.maximum(np.round(15.0 / (step * spacing)), 3))
    peaks = (edt == ndimage.maximum_filter(edt, size=size)) & (edt >= 0.5 * float(edt.max()))
    idx = np.argwhere(peaks)
    vals = edt[peaks]
    order = np.argsort(vals)[::-1]
    centres = index_points_mm(step * idx[order], affine)
    chosen: list[int] = []
    for i in range(len(order)):  # strongest first, at least 15 mm from the ones kept
        if all(np.linalg.norm(centres[i] - centres[j]) >= 15.0 for j in chosen):
            chosen.append(i)
        if len(chosen) == max_candidates:
            break
    best: tuple[np.ndarray, float, float] | None = None
    tol = max(1.5, 1.5 * h)
    for i in chosen:
        fit = _fit_ball(surface, centres[i], float(vals[order[i]]), h)
        if fit is None or not radius_range_mm[0] <= fit[1] <= radius_range_mm[1]:
            continue
        coverage = _sphere_coverage(surface, fit[0], fit[1], tol)
        if best is None or coverage > best[2]:
            best = (fit[0], fit[1], coverage)
    if best is None:
        raise ClinicalError(
            f"no femoral head found: no thick part of the bone fits a sphere of radius {radius_range_mm} mm "
            "(wrong spacing in the affine, or not a femur)"
        )
    return best


def _shaft_run(areas: np.ndarray, ok: np.ndarray, ratio: float, min_slices: int) -> tuple[int, int, float]:
    """The straight shaft among the cross sections: (first slice, end slice, reference area mm^2).

    A stable window is ``min_slices`` consecutive ``ok`` slices whose largest area is at most ``ratio``
    times the smallest. The shaft's reference area is the smallest median area of a stable window (the
    diaphysis is the narrowest part of the femur below the neck); the shaft is the most proximal run of
    ``ok`` slices with areas within ``ratio`` of it that is at least ``min_slices`` long. Without any
    stable window, the longest stable run (shorter than ``min_slices``) and an infinite area.
    """
    n = len(areas)
    if n >= min_slices:
        windows = np.lib.stride_tricks.sliding_window_view(areas, min_slices)
        stable = np.lib.stride_tricks.sliding_window_view(ok, min_slices).all(1)
        stable &= windows.max(1) <= ratio * windows.min(1)
    else:
        stable = np.zeros(0, dtype=bool)
    if not stable.any():  # no shaft: the longest stable run, for the message
        best = (0, 0)
        for i in np.nonzero(ok)[0]:
            seg_ok = ok[i:]
            a = areas[i : i + (int(np.argmin(seg_ok)) if not seg_ok.all() else len(seg_ok))]
            good = np.maximum.accumulate(a) <= ratio * np.minimum.accumulate(a)
            j = int(np.argmin(good)) if not good.all() else len(good)
            if j > best[1] - best[0]:
                best = (int(i), int(i) + j)
        return best[0], best[1], np.inf
    medians = np.where(stable, np.median(windows, axis=1), np.inf)
    i_ref = int(np.argmin(medians))
    a_ref = float(medians[i_ref])
    shaft = ok & (areas <= ratio * a_ref) & (areas >= a_ref / ratio)
    lab, n_runs = ndimage.label(shaft)
    for run in range(1, n_runs + 1):  # labels are numbered from the proximal end
        where = np.nonzero(lab == run)[0]
        if len(where) >= min_slices:
            return int(where[0]), int(where[-1]) + 1, a_ref
    return i_ref, i_ref + min_slices, a_ref  # the reference window itself (only on rounding ties)


def _provisional_shaft_directions(
    points: np.ndarray,
    cut: np.ndarray,
    mask: np.ndarray,
    boundary: np.ndarray,
    affine: np.ndarray,
    cut_near: np.ndarray,
    head_centre: np.ndarray,
    head_radius: float,
    vol: float,
) -> list[np.ndarray]:
    """Starting directions (distal) for the diaphysis axis from the bone 40-160 mm beyond the head sphere.

    1. the tube axis of its surface normals (smallest eigenvector of sum(n n^T), iterated while ignoring
       normals within 50 deg of the axis), leaving out the surface near cut faces (``cut_near``), whose
       smoothed normals mix the cut face with the shaft; 2. the direction from the head centre to its
       centroid.
    """
    rel = points - head_centre
    dist2 = np.einsum("ij,ij->i", rel, rel)
    far = (dist2 > (head_radius + 40.0) ** 2) & ~cut
    if far.sum() * vol < 2000.0:
        raise ClinicalError(
            f"only {far.sum() * vol / 1000:.1f} cm^3 of bone lies farther than 40 mm beyond the femoral "
            "head: "
            "no diaphysis (shaft) in the field of view"
        )
    towards = unit(np.compress(far, points, axis=0).mean(0) - head_centre)
    surf = index_points_mm(boundary, affine)
    rel = surf - head_centre
    dist = np.sqrt(np.einsum("ij,ij->i", rel, rel))
    sel = (dist > head_radius + 40.0) & (dist < head_radius + 160.0) & ~cut_near
    normals = _surface_normals(mask, boundary[sel], affine) if sel.sum() >= 30 else np.zeros((0, 3))
    normals = normals[~np.isnan(normals[:, 0])]
    if len(normals) < 30:
        return [towards]
    d = towards
    cos_cut = np.cos(np.radians(50.0))
    for it in range(6):
        use = normals[np.abs(normals @ d) < cos_cut] if it else normals
        if len(use) < 30:
            break
        _, vecs = np.linalg.eigh(use.T @ use)
        new = vecs[:, 0] if vecs[:, 0] @ d > 0 else -vecs[:, 0]
        converged = new @ d > np.cos(np.radians(0.1))
        d = new
        if converged and it:
            break
    return [d, towards]


def _robust_line(
    points: np.ndarray, weights: np.ndarray, min_scale_mm: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted line fit with Tukey biweights on the distances to the line (5 reweightings).

    Points farther than about 4.7 robust scales (at least ``min_scale_mm``) from the line get no weight:
    cross sections shifted by a lesser trochanter or a bump in the mask do not tilt the axis.
    """
    centre, d = fit_line(points, weights)
    w = weights
    for _ in range(5):
        rel = points - centre
        res = np.linalg.norm(rel - np.outer(rel @ d, d), axis=1)
        scale = max(min_scale_mm, 1.4826 * float(np.median(res)))
        z = res / (4.685 * scale)
        w = weights * np.where(z < 1.0, (1.0 - z**2) ** 2, 0.0)
        if np.count_nonzero(w) < 3:
            break
        centre, d = fit_line(points, w)
    return centre, d


class _Depth:
    """Distance (mm) from voxels of ``mask`` to the background at full resolution, computed in boxes.

    The distance transform is computed in the bounding box of the voxels asked for, plus ``pad`` voxels
    (more when a box is recomputed), and reused while later voxels lie inside it. The bone beyond the box
    counts as bone, so a depth is exact unless its nearest background lies outside the box.
    """

    def __init__(self, mask: np.ndarray, spacing: np.ndarray, pad: int = 12) -> None:
        self.mask, self.spacing, self.pad = mask, spacing, pad
        self.lo = self.hi = np.zeros(3, dtype=int)
        self.edt = np.zeros((0, 0, 0))

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        """Depth (mm) of the voxels ``idx`` (N, 3)."""
        if np.any(idx.min(0) < self.lo) or np.any(idx.max(0) >= self.hi):
            self.lo = np.maximum(idx.min(0) - self.pad, 0)
            self.hi = np.minimum(idx.max(0) + self.pad + 1, self.mask.shape)
            box = self.mask[tuple(slice(a, b) for a, b in zip(self.lo, self.hi, strict=True))]
            self.edt = ndimage.distance_transform_edt(box, sampling=self.spacing)
        return self.edt[tuple((idx - self.lo).T)]


def _diaphysis_axis(
    points: np.ndarray,
    cut: np.ndarray,
    head_centre: np.ndarray,
    head_radius: float,
    h: float,
    vol: float,
    min_shaft_mm: float,
    max_shaft_mm: float,
    initial: np.ndarray,
    mask: np.ndarray,
    idx: np.ndarray,
    spacing: np.ndarray,
    flare_ratio: float = 1.25,
) -> tuple[np.ndarray, np.ndarray, float, float, tuple[float, float]]:
    """Centroid line of the straight shaft's complete cross sections.

    Starts from the direction ``initial`` and iterates. 1 mm (or one voxel) slices perpendicular to the
    current axis are counted from the head sphere onwards. A slice can belong to the shaft when it holds
    no voxel of a cut face (``cut``: it is complete) and its centroid lies at least half a head radius
    from the line through the head centre along the axis (the neck, which runs through the head centre,
    never qualifies: the shaft is offset from the head). The shaft is found by :func:`_shaft_run` on the
    areas; its proximal 15 % (next to the metaphyseal flare) is left out, at most ``max_shaft_mm`` of it
    is used (the proximal diaphysis of a whole femur), and a robust weighted line through its slice
    centroids (:func:`_robust_line`) is the new axis.

    Returns:
        (point on the axis, distal unit direction, used length mm, shaft run length mm, (first, last)
        distance of the used section from the head centre along the axis, mm). When the used length is
        below ``min_shaft_mm`` the iteration stops and the caller reports it.
    """
    width = max(1.0, h)
    rel = points - head_centre
    d, centre = initial, head_centre
    min_slices = int(np.ceil(min_shaft_mm / width))
    depth_of = _Depth(mask, spacing)
    for it in range(10):
        t = rel @ d - head_radius  # slices start at the head sphere
        sel = t > 0.0
        t = t[sel]
        k = np.floor(t / width).astype(int)
        counts = np.bincount(k).astype(float)
        n = len(counts)
        cents = _slice_centroids(np.compress(sel, points, axis=0), k, counts)
        off = cents - head_centre
        offset = np.linalg.norm(off - np.outer(off @ d, d), axis=1)
        ok = (
            (counts > 0)
            & (np.bincount(k, weights=cut[sel], minlength=n) == 0)
            & (offset >= 0.5 * head_radius)
        )
        ok[:-1] &= ok[1:]  # the linear binning below also spreads voxels into the next slice
        # areas by linear (cloud-in-cell) binning and a 5 mm moving mean: on a voxel grid, hard 1 mm bins
        # alias with the voxel rows and the areas flicker (up to 25 % along a grid diagonal)
        u = t / width - 0.5
        k_lo = np.floor(u).astype(int)
        frac = u - k_lo
        smooth = np.bincount(k_lo + 1, weights=frac, minlength=n + 1)[:n]
        smooth += np.bincount(np.maximum(k_lo, 0), weights=1.0 - frac, minlength=n)[:n]
        # moving mean over the usable slices only: a cut section must not lower its neighbours' areas
        window = max(3, int(round(5.0 / width)))
        weight = ndimage.uniform_filter1d(ok.astype(float), window, mode="constant")
        areas = ndimage.uniform_filter1d(smooth * ok * vol / width, window, mode="constant")
        areas = np.where(ok, areas / np.maximum(weight, 1e-9), 0.0)
        i0, i1, a_ref = _shaft_run(areas, ok, flare_ratio, min_slices)
        run_mm = (i1 - i0) * width
        used_mm = min(run_mm, max_shaft_mm)
        first = i0 + int(np.ceil(0.15 * used_mm / width))
        stop = min(i1, first + int(np.floor(0.85 * used_mm / width)))
        length = (stop - first) * width
        if run_mm < min_shaft_mm or stop - first < 3:  # too short to refine the axis: the caller reports it
            break
        if it < 2:  # plain section centroids bring the axis close
            line_pts, line_w = cents[first:stop], counts[first:stop]
        else:  # then the centroids of the sections' thick cores: a trochanter or a bump does not shift them
            near = np.zeros(len(points), dtype=bool)
            near[np.nonzero(sel)[0][(k >= first - 2) & (k < stop + 2)]] = True
            depth = depth_of(idx[near])
            core = np.zeros(len(points), dtype=bool)
            core[np.nonzero(near)[0][depth >= 0.7 * np.sqrt(a_ref / np.pi)]] = True
            kc = np.floor((rel[core] @ d - head_radius) / width).astype(int)
            in_run = (kc >= first) & (kc < stop)
            kc = kc[in_run] - first
            core_counts = np.bincount(kc, minlength=stop - first).astype(float)
            core_pts = np.compress(core, points, axis=0)[in_run]
            core_cents = _slice_centroids(core_pts, kc, core_counts)
            keep = core_counts > 0
            line_pts, line_w = core_cents[keep], core_counts[keep]
            if len(line_pts) < 3:
                line_pts, line_w = cents[first:stop], counts[first:stop]
        centre, d_new = _robust_line(line_pts, line_w)
        d_new = d_new if d_new @ d > 0 else -d_new
        converged = d_new @ d > np.cos(np.radians(0.05))
        d = d_new
        if converged and it >= 2:
            break
    return centre, d, length, run_mm, ((first * width + head_radius), (stop * width + head_radius))


def _tube_direction(
    mask: np.ndarray,
    boundary: np.ndarray,
    affine: np.ndarray,
    cut_near: np.ndarray,
    head_centre: np.ndarray,
    direction: np.ndarray,
    section_mm: tuple[float, float],
) -> np.ndarray:
    """Tube axis of a shaft section from its surface normals (an estimate independent of the centroids).

    The eigenvector with the smallest eigenvalue of sum(n n^T) over the normals of the boundary voxels
    whose distance from the head centre along ``direction`` is within ``section_mm``, leaving out those
    near a cut face (``cut_near``, one flag per boundary voxel).
    """
    surf = index_points_mm(boundary, affine)
    t = (surf - head_centre) @ direction
    sel = (t >= section_mm[0]) & (t < section_mm[1]) & ~cut_near
    normals = _surface_normals(mask, boundary[sel], affine) if sel.any() else np.zeros((0, 3))
    normals = normals[~np.isnan(normals[:, 0])]
    if len(normals) < 30:
        return direction
    _, vecs = np.linalg.eigh(normals.T @ normals)
    return vecs[:, 0] if vecs[:, 0] @ direction > 0 else -vecs[:, 0]


def _head_fit(
    surface: np.ndarray,
    centre: np.ndarray,
    radius: float,
    neck_dir: np.ndarray,
    cone_deg: float,
    h: float,
    margin_mm: float = 5.0,
) -> tuple[np.ndarray, float]:
    """Robust sphere fit on surface points near the current sphere, outside the neck cone.

    The points are pre-selected once in a shell around the starting sphere, ``margin_mm`` wider than
    the first band; while the sphere moves (centre + radius) by less than that margin, every band
    point lies in the shell, so the fits see exactly the points of the whole surface.
    """
    cos_cone = np.cos(np.radians(cone_deg))
    band = max(3.0, 0.25 * radius)
    final_band = max(1.5, 1.5 * h)
    c, r = centre, radius
    rel = surface - centre
    shell = np.abs(np.sqrt(np.einsum("ij,ij->i", rel, rel)) - radius) < band + margin_mm
    pts = np.compress(shell, surface, axis=0)
    for it in range(6):
        if np.linalg.norm(c - centre) + abs(r - radius) >= margin_mm:  # moved beyond the shell
            pts = surface
        d = pts - c
        dist = np.linalg.norm(d, axis=1)
        outside_cone = (d @ neck_dir) < cos_cone * dist
        sel = outside_cone & (np.abs(dist - r) < band)
        if sel.sum() < 50:
            raise ClinicalError("no spherical femoral head surface found near the expected head position")
        # the intermediate fits only choose the next band: 0.01 mm is precise enough for them
        tol_mm = 1e-4 if it == 5 else 1e-2
        c, r, _ = fit_sphere(np.compress(sel, pts, axis=0), c, r, min_scale=0.3 * h, tol_mm=tol_mm)
        band = max(final_band, 0.6 * band)
    return c, r


def _neck_direction(points: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    """Unit direction from the head centre to the centroid of the bone in a shell just outside the head."""
    rel = points - centre
    dist2 = np.einsum("ij,ij->i", rel, rel)
    shell = (dist2 > (1.05 * radius) ** 2) & (dist2 < (1.05 * radius + 12.0) ** 2)
    if shell.sum() < 10:
        raise ClinicalError("the femoral head is not attached to a neck (isolated sphere-like blob)")
    return unit(np.compress(shell, points, axis=0).mean(0) - centre)


def _neck_axis(
    points: np.ndarray,
    centre: np.ndarray,
    radius: float,
    neck_dir: np.ndarray,
    shaft: tuple[np.ndarray, np.ndarray],
    h: float,
    vol: float,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Narrowest neck section between the head and the diaphysis axis.

    Returns (neck centre, unit direction head->neck, minimum area mm^2).
    """
    d = neck_dir
    width = max(1.0, h)
    q = centre
    a_min = 0.0
    foot = shaft[0] + ((centre - shaft[0]) @ shaft[1]) * shaft[1]  # head centre projected on the axis
    # every slab below lies within this ball around the head centre: select its points once
    reach = np.hypot(max(float(np.linalg.norm(foot - centre)), radius + 5.0), 1.1 * radius)
    rel = points - centre
    rel2 = np.einsum("ij,ij->i", rel, rel)
    inside = rel2 < reach**2
    points, rel, rel2 = (np.compress(inside, a, axis=0) for a in (points, rel, rel2))
    for _ in range(4):
        t_max = max((foot - centre) @ d, radius + 5.0)  # the neck ends at the diaphysis axis
        t = rel @ d
        sel = (t > 0.3 * radius) & (t < t_max) & (rel2 - t * t < (1.1 * radius) ** 2)
        if sel.sum() < 20:
            raise ClinicalError("femoral neck not found between the head and the shaft")
        areas, cents, counts = _slice_stats(np.compress(sel, points, axis=0), centre, d, width, vol)
        smooth = np.convolve(areas, np.ones(3) / 3, mode="same")
        valid = counts > 0
        # ends of the search range are partial slices, and the 3-slice mean spreads them into their
        # neighbours: a partial last slice at the diaphysis axis would pass for the narrowest neck
        valid[:2] = valid[-2:] = False
        if not valid.any():
            raise ClinicalError("femoral neck not found between the head and the shaft")
        i_min = int(np.argmin(np.where(valid, smooth, np.inf)))
        a_min = float(smooth[i_min])
        low = valid & (smooth <= 1.05 * a_min)
        lab, _ = ndimage.label(low)
        run = lab == lab[i_min]
        q = (cents[run] * counts[run, None]).sum(0) / counts[run].sum()
        d = unit(q - centre)
    return q, d, a_min


def _cut_by_border(centre: np.ndarray, radius: float, affine: np.ndarray, shape: tuple[int, ...]) -> bool:
    """True if the sphere pokes out of the array's field of view by more than half a voxel."""
    inv = np.linalg.inv(affine)
    c_idx = inv[:3, :3] @ centre + inv[:3, 3]
    reach = radius * np.linalg.norm(inv[:3, :3], axis=1)
    return bool(np.any(c_idx - reach < -1.0) or np.any(c_idx + reach > np.asarray(shape)))


def measure(
    mask: np.ndarray,
    affine: np.ndarray,
    *,
    min_volume_mm3: float = 20_000.0,
    max_fragment_fraction: float = 0.05,
    min_shaft_mm: float = 18.0,
    max_shaft_mm: float = 80.0,
    min_head_inlier_fraction: float = 0.75,
    head_radius_range_mm: tuple[float, float] = (8.0, 45.0),
    max_axis_disagreement_deg: float = 10.0,
) -> dict[str, float | list[float]]:
    """Measure the proximal-femur parameters on a binary mask.

    Args:
        mask: 3D mask of one femur (non-zero = bone): a proximal ROI or the whole bone, any voxel
            orientation (the head end is found from the anatomy, not from the array axes).
        affine: 4x4 voxel-to-world matrix with the TRUE voxel spacing (mm).
        min_volume_mm3: smaller bone volumes are rejected as too small.
        max_fragment_fraction: a second 26-connected piece at least this fraction of the largest is an
            error; smaller pieces are dropped.
        min_shaft_mm: minimum length of straight diaphysis inside the field of view (whole cross sections
            within 1.25x of the shaft's area) needed for the diaphysis axis; its proximal 15 % (next to the
            flare) is left out of the fit.
        max_shaft_mm: longest stretch of straight diaphysis (below the trochanters) the axis is fitted to,
            so that a whole femur gives the axis of its proximal diaphysis, as a proximal ROI does.
        min_head_inlier_fraction: fraction of the head surface (outside the neck cone) that must lie
            within 2 mm (or 2 voxels) of the fitted sphere; lower means holes or a malformed head.
        head_radius_range_mm: plausible head radii; outside it the fit is rejected.
        max_axis_disagreement_deg: largest angle allowed between the shaft direction from the surface
            normals of the shaft sections used and the one from their centres (reported as
            ``diaphysis_axis_disagreement_deg``); larger means the shaft found is not a straight tube.

    Returns:
        Dict with ``head_centre_xyz_mm``, ``head_radius_mm``, ``neck_centre_xyz_mm``,
        ``diaphysis_centre_xyz_mm``, ``neck_shaft_angle_deg``, ``femoral_offset_mm``,
        ``neck_axis_{x,y,z}_deg``, ``diaphysis_axis_{x,y,z}_deg``, ``neck_diameter_mm``,
        ``head_fit_rms_mm``, ``diaphysis_length_mm``, ``diaphysis_axis_disagreement_deg`` and
        ``fragments_removed``.

    Raises:
        ClinicalError: empty/too small/NaN mask, fragmented bone, missing shaft, head or neck, a head cut
            by the field of view, or a non-spherical head (holes).
    """
    affine = np.asarray(affine, dtype=float)
    binary = validate_mask(mask, affine, min_voxels=20, what="femur mask")
    vol = float(abs(np.linalg.det(affine[:3, :3])))
    if binary.sum() * vol < min_volume_mm3:
        raise ClinicalError(
            f"femur mask volume {binary.sum() * vol / 1000:.1f} cm^3 is below "
            f"{min_volume_mm3 / 1000:.0f} cm^3: "
            "too small for a proximal femur (wrong spacing in the affine, or a failed prediction)"
        )
    full_shape = binary.shape
    crop, crop_aff = crop_to_foreground(binary, affine)
    crop, removed = clean_components(crop, 1.0, max_fragment_fraction, "femur mask")
    offset_idx = np.round(np.linalg.solve(affine[:3, :3], crop_aff[:3, 3] - affine[:3, 3])).astype(int)
    spacing = voxel_spacing(crop_aff)
    h = float(spacing.max())
    idx = np.argwhere(crop)
    points = index_points_mm(idx, crop_aff)  # voxel centres, mm
    boundary = boundary_voxels(crop)
    surface_all = surface_points_mm(crop, crop_aff, boundary)
    faces = _cut_faces(crop, offset_idx, full_shape, spacing)
    cut = _near_faces(idx, faces, 2)  # voxels on a cut face: their cross sections are incomplete

    # 2. femoral head: the most spherical thick part (EDT on a 2x subsampled grid: seeds only)
    # depth inside the bone (mm) for the head seeds: EDT on a grid subsampled to steps of at most 2 mm
    step = np.maximum(np.floor(2.0 / spacing), 1).astype(int)
    edt = ndimage.distance_transform_edt(crop[:: step[0], :: step[1], :: step[2]], sampling=step * spacing)
    c0, r0, _ = _find_head(edt, step, spacing, crop_aff, surface_all, h, head_radius_range_mm)

    # 3. diaphysis axis (direction pointing distally, away from the head): from each starting direction,
    # the one with the longest straight shaft
    # surface within 6 voxels of the coarsest axis (in mm, per axis) of a cut face: smoothed normals there
    # mix the face with the shaft (layers of the finest axis would strip 3x that depth off a coarse face)
    cut_near = _near_faces(boundary, faces, np.ceil(6.0 * h / spacing).astype(int) + 2)
    starts = _provisional_shaft_directions(points, cut, crop, boundary, crop_aff, cut_near, c0, r0, vol)
    fits = []
    for start in starts:  # the second start only where the first finds too little shaft
        fits.append(
            _diaphysis_axis(
                points, cut, c0, r0, h, vol, min_shaft_mm, max_shaft_mm, start, crop, idx, spacing
            )
        )
        if fits[-1][3] >= min_shaft_mm:
            break
    shaft_pt, shaft_dir, shaft_len, run_len, section = max(fits, key=lambda fit: fit[3])
    if run_len < min_shaft_mm:
        raise ClinicalError(
            f"only {run_len:.1f} mm of straight shaft inside the field of view (need >= "
            f"{min_shaft_mm:.0f} mm): below the trochanters, the whole cross sections (not cut by the "
            "border) within 1.25x of the shaft's area are that short; the diaphysis is missing or cut too "
            "short by the field of view"
        )
    tube_dir = _tube_direction(crop, boundary, crop_aff, cut_near, c0, shaft_dir, section)

    # 4. femoral head refined outside the neck cone
    neck_dir = _neck_direction(points, c0, r0)
    rel = points - c0
    points_near = np.compress(np.einsum("ij,ij->i", rel, rel) < (2.0 * r0 + 60.0) ** 2, points, axis=0)
    rel = surface_all - c0
    surface = np.compress(np.einsum("ij,ij->i", rel, rel) < (2.0 * r0 + 20.0) ** 2, surface_all, axis=0)
    centre, radius = _head_fit(surface, c0, r0, neck_dir, 55.0, h)
    neck_dir = _neck_direction(points_near, centre, radius)
    neck_centre, neck_dir, neck_area = _neck_axis(
        points_near, centre, radius, neck_dir, (shaft_pt, shaft_dir), h, vol
    )
    neck_radius = float(np.sqrt(neck_area / np.pi))
    cone = float(np.degrees(np.arcsin(min(neck_radius / radius, 0.95)))) + 12.0
    centre, radius = _head_fit(surface, centre, radius, neck_dir, cone, h)
    if not head_radius_range_mm[0] <= radius <= head_radius_range_mm[1]:
        raise ClinicalError(
            f"fitted femoral head radius {radius:.1f} mm is outside {head_radius_range_mm} mm: no head found "
            "(wrong spacing in the affine, or not a femur)"
        )
    if _cut_by_border(centre, radius, affine, full_shape):
        raise ClinicalError("the femoral head is cut by the border of the volume: re-centre the ROI")

    # head surface quality: how much of the head (outside the neck cone) hugs the sphere
    d = surface - centre
    dist = np.linalg.norm(d, axis=1)
    cap = ((d @ neck_dir) < np.cos(np.radians(cone)) * dist) & (dist < radius + 6.0)
    inlier = np.abs(dist[cap] - radius) < max(2.0, 2.0 * h)
    frac = float(inlier.mean()) if cap.any() else 0.0
    if frac < min_head_inlier_fraction:
        raise ClinicalError(
            f"femoral head is not spherical: only {frac:.0%} of its surface lies within 2 mm of the fitted "
            f"sphere (need {min_head_inlier_fraction:.0%}); the mask has holes or defects in the head"
        )
    rms = float(np.sqrt(np.mean((dist[cap][inlier] - radius) ** 2)))
    neck_centre, neck_dir, neck_area = _neck_axis(
        points_near, centre, radius, neck_dir, (shaft_pt, shaft_dir), h, vol
    )
    if neck_area >= 0.95 * np.pi * radius**2:
        raise ClinicalError(
            "no femoral neck constriction found below the head: the neck is missing or merged"
        )

    # two independent estimates of the shaft direction (surface normals of the shaft sections used,
    # centroids of the sections) must agree; they part when the "shaft" found is not a straight tube
    disagreement = float(np.degrees(np.arccos(np.clip(abs(tube_dir @ shaft_dir), 0.0, 1.0))))
    if disagreement > max_axis_disagreement_deg:
        raise ClinicalError(
            f"the diaphysis axis is ambiguous: the shaft's surface normals and its cross-section "
            f"centres give directions {disagreement:.0f} deg apart (max {max_axis_disagreement_deg:.0f}); "
            "too little straight shaft in the field of view, or a malformed shaft"
        )

    # 6. parameters
    towards_head = -neck_dir
    cos_nsa = float(np.clip(towards_head @ shaft_dir, -1.0, 1.0))
    nsa = float(np.degrees(np.arccos(cos_nsa)))
    nsa = nsa if nsa >= 90.0 else 180.0 - nsa
    offset = float(point_line_distance(centre, shaft_pt, shaft_dir)[0])
    if offset < 0.75 * radius:
        raise ClinicalError(
            f"the head centre lies {offset:.0f} mm from the diaphysis axis: no shaft distinct from the neck "
            "was found (the diaphysis is missing or cut off by the field of view)"
        )
    na = axis_angles_deg(neck_dir)
    da = axis_angles_deg(shaft_dir)
    result: dict[str, float | list[float]] = {
        "head_centre_xyz_mm": [float(v) for v in centre],
        "head_radius_mm": float(radius),
        "neck_centre_xyz_mm": [float(v) for v in neck_centre],
        "diaphysis_centre_xyz_mm": [float(v) for v in shaft_pt],
        "neck_shaft_angle_deg": nsa,
        "femoral_offset_mm": offset,
        "neck_axis_x_deg": na[0],
        "neck_axis_y_deg": na[1],
        "neck_axis_z_deg": na[2],
        "diaphysis_axis_x_deg": da[0],
        "diaphysis_axis_y_deg": da[1],
        "diaphysis_axis_z_deg": da[2],
        "neck_diameter_mm": 2.0 * float(np.sqrt(neck_area / np.pi)),
        "head_fit_rms_mm": rms,
        "diaphysis_length_mm": float(shaft_len),
        "diaphysis_axis_disagreement_deg": disagreement,
        "fragments_removed": float(removed),
    }
    for key, value in result.items():
        if not np.all(np.isfinite(value)):
            raise ClinicalError(f"femur measurement produced a non-finite {key}")
    return result
