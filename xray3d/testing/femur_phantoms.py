"""Parametric femur phantoms with known answers, for testing :mod:`xray3d.clinical.femur`.

A phantom is a union of simple solids in a femur frame (x medial, y anterior, z proximal; the shaft axis is
the z axis and the neck axis meets it at the origin): a spherical head of known centre and radius, a
conical neck at a known neck-shaft angle (NSA), a trochanteric block with a greater-trochanter ellipsoid
and a lesser-trochanter ball, a conical metaphyseal flare, a cylindrical shaft and, for a whole femur, a
distal flare with two ellipsoidal condyles. The frame is rotated into world millimetres and voxelised on a
grid of any spacing, axis order and axis sign; a proximal phantom is cut by an axis-aligned region of
interest (ROI, 128 mm by default) that keeps the head and trochanters and cuts the shaft, obliquely when
the femur is tilted.

The truth returned with every mask: head centre (world mm), head radius, NSA, the distal shaft and neck
directions, the femoral offset, and ``shaft_in_roi_mm``: the length of cylindrical shaft whose whole cross
section lies inside the ROI (the straight diaphysis a measurement can use).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FemurShape", "femur_phantom", "roi_for_head"]


@dataclass(frozen=True)
class FemurShape:
    """Dimensions of the phantom femur (mm, degrees); defaults are typical adult values.

    Attributes:
        nsa_deg: neck-shaft angle.
        head_radius_mm: femoral head radius.
        neck_length_mm: distance from the neck-shaft junction (origin) to the head centre.
        neck_radius_base_mm, neck_radius_head_mm: neck cone radius at the junction and at the head centre.
        shaft_radius_mm: radius of the cylindrical diaphysis.
        trochanter_radius_mm: radius of the trochanteric block above the flare.
        flare_top_mm, shaft_top_mm: z where the flare leaves the trochanteric block and where the cylinder
            starts (negative: distal of the junction).
        block_top_mm: z of the top of the trochanteric block.
        greater_trochanter: include the lateral greater-trochanter ellipsoid.
        lesser_trochanter: include the posteromedial lesser-trochanter ball.
        length_mm: length from the junction to the distal end of the bone (condyles for a whole femur).
        condyles: model the distal femur (flare + two condyles); otherwise the shaft ends flat.
    """

    nsa_deg: float = 128.0
    head_radius_mm: float = 22.0
    neck_length_mm: float = 50.0
    neck_radius_base_mm: float = 15.0
    neck_radius_head_mm: float = 12.0
    shaft_radius_mm: float = 14.0
    trochanter_radius_mm: float = 19.0
    flare_top_mm: float = -2.0
    shaft_top_mm: float = -28.0
    block_top_mm: float = 12.0
    greater_trochanter: bool = True
    lesser_trochanter: bool = True
    length_mm: float = 200.0
    condyles: bool = False

    @property
    def neck_dir(self) -> np.ndarray:
        """Unit neck direction (junction to head) in the femur frame."""
        a = np.radians(self.nsa_deg)
        return np.array([np.sin(a), 0.0, -np.cos(a)])

    @property
    def head_centre(self) -> np.ndarray:
        """Head centre in the femur frame (mm)."""
        return self.neck_length_mm * self.neck_dir


def _axial_solid(p: np.ndarray, z_lo: float, z_hi: float, r_lo: float, r_hi: float) -> np.ndarray:
    """Inside a truncated cone about the z axis from (z_lo, r_lo) to (z_hi, r_hi)."""
    z = p[:, 2]
    t = np.clip((z - z_lo) / (z_hi - z_lo), 0.0, 1.0)
    radius = r_lo + t * (r_hi - r_lo)
    return (z >= z_lo) & (z <= z_hi) & (p[:, 0] ** 2 + p[:, 1] ** 2 <= radius**2)


def _ellipsoid(
    p: np.ndarray, centre: tuple[float, float, float], axes: tuple[float, float, float]
) -> np.ndarray:
    return (((p - np.asarray(centre)) / np.asarray(axes)) ** 2).sum(1) <= 1.0


def _inside(p: np.ndarray, s: FemurShape) -> np.ndarray:
    """Membership of femur-frame points (N, 3) in the phantom."""
    head = s.head_centre
    inside = ((p - head) ** 2).sum(1) <= s.head_radius_mm**2
    # neck: truncated cone from the junction (origin) to the head centre
    t = np.clip(p @ s.neck_dir / s.neck_length_mm, 0.0, 1.0)
    radial2 = ((p - np.outer(t * s.neck_length_mm, s.neck_dir)) ** 2).sum(1)
    inside |= radial2 <= (s.neck_radius_base_mm + t * (s.neck_radius_head_mm - s.neck_radius_base_mm)) ** 2
    r_t, r_s = s.trochanter_radius_mm, s.shaft_radius_mm
    inside |= _axial_solid(p, s.flare_top_mm, s.block_top_mm, r_t, r_t)
    inside |= _axial_solid(p, s.shaft_top_mm, s.flare_top_mm, r_s, r_t)
    if s.greater_trochanter:
        inside |= _ellipsoid(p, (-0.7 * r_t, 2.0, s.block_top_mm), (0.6 * r_t, 0.9 * r_t, 16.0))
    if s.lesser_trochanter:
        inside |= _ellipsoid(p, (0.6 * r_t, -0.5 * r_t, s.shaft_top_mm + 6.0), (9.0, 7.0, 9.0))
    z_end = -s.length_mm
    if s.condyles:
        inside |= _axial_solid(p, z_end + 120.0, s.shaft_top_mm, r_s, r_s)
        inside |= _axial_solid(p, z_end + 30.0, z_end + 120.0, 2.1 * r_s, r_s)
        for side in (-1.0, 1.0):
            inside |= _ellipsoid(p, (side * 19.0, -8.0, z_end + 26.0), (17.0, 30.0, 26.0))
    else:
        inside |= _axial_solid(p, z_end, s.shaft_top_mm, r_s, r_s)
    return inside


def roi_for_head(
    shape: FemurShape, rotation: np.ndarray, roi_mm: float = 128.0, push: float = 1.0, margin_mm: float = 3.0
) -> np.ndarray:
    """Lower corner (world mm) of an axis-aligned cubic ROI that holds the head and the trochanters.

    Among the positions that keep the head sphere, the greater trochanter and the top of the trochanteric
    block ``margin_mm`` inside, ``push = 1`` takes the one reaching farthest down the shaft and ``push = 0``
    the one centred on them.
    """
    r_t = shape.trochanter_radius_mm
    rot = np.asarray(rotation, dtype=float)
    block = [
        np.array([x, y, shape.block_top_mm + z])
        for x in (-1.5 * r_t, r_t)
        for y in (-r_t, r_t)
        for z in (0, 6)
    ]
    pts = np.asarray(block) @ rot.T
    head = rot @ shape.head_centre
    lo = np.minimum(pts.min(0), head - shape.head_radius_mm) - margin_mm
    hi = np.maximum(pts.max(0), head + shape.head_radius_mm) + margin_mm
    if np.any(hi - lo > roi_mm):
        raise ValueError(f"the head and trochanters do not fit a {roi_mm} mm ROI")
    distal = rot @ np.array([0.0, 0.0, -1.0])
    centred = (lo + hi) / 2 - roi_mm / 2
    pushed = np.where(distal > 0, lo, hi - roi_mm)  # corner reaching farthest along the shaft
    return centred + push * (pushed - centred)


def _shaft_in_roi(shape: FemurShape, rotation: np.ndarray, corner: np.ndarray, roi_mm: float) -> float:
    """Length (mm) of cylindrical shaft whose complete cross section lies inside the ROI."""
    d = np.asarray(rotation) @ np.array([0.0, 0.0, -1.0])
    across = shape.shaft_radius_mm * np.sqrt(np.clip(1.0 - d**2, 0.0, 1.0))  # disc half-extent per axis
    z_top = -shape.shaft_top_mm
    z_end = shape.length_mm - (120.0 if shape.condyles else 0.0)
    s = np.arange(z_top, z_end, 0.1)
    centres = np.outer(s, d)
    ok = np.all((centres - across >= corner) & (centres + across <= corner + roi_mm), axis=1)
    if not ok.any():
        return 0.0
    stop = int(np.argmin(ok)) if not ok.all() else len(s)
    return float(s[stop - 1] - z_top) if ok[0] else 0.0


def femur_phantom(
    shape: FemurShape = FemurShape(),
    rotation: np.ndarray | None = None,
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
    axes: tuple[int, int, int] = (0, 1, 2),
    flips: tuple[bool, bool, bool] = (False, False, False),
    roi_mm: float | None = 128.0,
    push: float = 1.0,
    origin_mm: tuple[float, float, float] = (12.0, -30.0, 40.0),
) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
    """Voxelise a femur phantom.

    Args:
        shape: the femur's dimensions.
        rotation: 3x3 rotation from the femur frame to world (identity: shaft along world -z).
        spacing_mm: voxel size along world x, y, z.
        axes: world axis of each array axis (a permutation of 0, 1, 2).
        flips: whether each array axis runs against its world axis.
        roi_mm: edge of the cubic ROI cut from the bone (see :func:`roi_for_head`); ``None`` keeps the
            whole bone with a 4 mm background margin.
        push: ROI position between centred on the proximal femur (0) and reaching farthest down the shaft (1).
        origin_mm: world position of the neck-shaft junction.

    Returns:
        (boolean mask, 4x4 voxel-to-world affine, truth dict with ``head_centre`` (world mm),
        ``head_radius``, ``nsa``, ``offset``, ``shaft_dir`` (distal), ``neck_dir`` (towards the head),
        ``shaft_in_roi_mm``).
    """
    rot = np.eye(3) if rotation is None else np.asarray(rotation, dtype=float)
    shift = np.asarray(origin_mm, dtype=float)
    if roi_mm is None:
        corners = np.array(np.meshgrid(*[[-1.0, 1.0]] * 3)).reshape(3, -1).T
        r = max(2.2 * shape.shaft_radius_mm + 8.0, shape.head_radius_mm, shape.trochanter_radius_mm + 16.0)
        ends = [
            shape.head_centre,
            np.array([0.0, 0.0, shape.block_top_mm + 14.0]),
            np.array([0, 0, -shape.length_mm]),
        ]
        pts = np.concatenate([e + r * corners for e in ends]) @ rot.T
        lo, size = pts.min(0) - 4.0, pts.max(0) - pts.min(0) + 8.0
        shaft_len = shape.length_mm + shape.shaft_top_mm - (120.0 if shape.condyles else 0.0)
    else:
        lo, size = roi_for_head(shape, rot, roi_mm, push), np.full(3, float(roi_mm))
        shaft_len = _shaft_in_roi(shape, rot, lo, roi_mm)
    sp = np.asarray(spacing_mm, dtype=float)
    n_world = np.maximum(np.round(size / sp).astype(int), 1)
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    arr_shape = tuple(int(n_world[w]) for w in axes)
    start = lo + sp / 2 + shift
    for k, w in enumerate(axes):
        sign = -1.0 if flips[k] else 1.0
        affine[w, k] = sign * sp[w]
        affine[w, 3] = start[w] + (sp[w] * (n_world[w] - 1) if flips[k] else 0.0)
    mask = np.zeros(arr_shape, dtype=bool)
    plane = np.indices(arr_shape[1:]).reshape(2, -1).T.astype(float)
    for i in range(arr_shape[0]):  # one array slab at a time keeps the memory small on whole bones
        idx = np.c_[np.full(len(plane), float(i)), plane]
        world = idx @ affine[:3, :3].T + affine[:3, 3]
        mask[i] = _inside((world - shift) @ rot, shape).reshape(arr_shape[1:])
    truth: dict[str, object] = {
        "head_centre": rot @ shape.head_centre + shift,
        "head_radius": shape.head_radius_mm,
        "nsa": shape.nsa_deg,
        "offset": shape.neck_length_mm * np.sin(np.radians(shape.nsa_deg)),
        "shaft_dir": rot @ np.array([0.0, 0.0, -1.0]),
        "neck_dir": rot @ shape.neck_dir,
        "shaft_in_roi_mm": shaft_len,
    }
    return mask, affine, truth
