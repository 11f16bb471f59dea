"""Pelvic landmarks and the anterior pelvic plane measured automatically on a binary pelvis mask.

Reference (benchmark spec section 6.2, Fischer et al. 2019 ported from MATLAB): COM centring, PCA frame,
quadrants split at the maximal pelvic width, ASIS/PT as the most anterior points, the anterior pelvic
plane (APP) frame, the ischial spines (IS) from 50 rotated "most posterior" searches and the posterior
superior iliac spines (PSIS) from a moving transverse plane. This implementation works on voxel-face
surface points in world millimetres (no mesh) and differs as follows:

* **Frame prior.** PCA is only used for the left-right axis (the largest, well separated eigenvalue); its
  sign and the anterior/superior axes come from the world frame of the affine (RAS+ for NIfTI), so a
  pelvis scanned in the usual supine orientation (within about 45 deg) needs no flips, no "rotate 180 and
  retry" sanity check and no per-subject exceptions.
* **Iterated APP.** ASIS and PT are re-extracted in the APP frame (quadrants split by the APP sagittal
  plane and the level half-way between PT and ASIS) until the plane stops moving (max 6 passes); the
  APP x axis is the inter-ASIS direction (the reference uses the inter-PT direction, which is shorter
  and noisier); the plane itself is the same (ASIS L, ASIS R, midpoint of the most anterior pubic
  points).
* **Pubic tubercles by their anatomical definition**, "the most lateral prominent swelling of the pubic
  crest" (Dagdelen & Benlier 2022, J Anat Soc India 71:154-5, doi:10.4103/jasi.jasi_143_21), a
  forward-projecting tubercle on the upper border of the medial superior ramus (Wikipedia "Pubic tubercle",
  after Gray's Anatomy, 20th ed. 1918, p. 236). In the APP frame, the pubis below half-way to the ASIS level
  is profiled in 2 mm lateral bins from the midline; the anterior face is the run of bins, outwards from the
  most anterior one, within ``tubercle_tol_mm`` (4 mm) of the front; the tubercle is the most
  anterior-superior face point of the run's last three bins. The reference's "most anterior point of each
  lower quadrant" lands on the symphyseal margins instead, 12-14 mm too medial (inter-tubercle 20-30 mm
  where raters give 49-56 mm, issue 14). The APP still goes through the most anterior pubic points
  (``pubic_symphysis_xyz_mm``), its usual definition.
* **PSIS by its anatomical definition**, the posterior end of the iliac crest: per side, the ilium lateral of
  the sacrum (``psis_lateral_fraction`` x inter-ASIS from the midline) above the ASIS level; among its points
  within ``psis_tol_mm`` (2 mm) of its most posterior extent, the lowest one, where the posterior border
  turns forwards. The reference's moving-plane "most posterior point" lies anywhere on the flat posterior
  crest: about 15 mm above the raters' PSIS on one of two rated pelves (issue 14), and 32 mm above this
  PSIS on the TotalSegmentator example. The PSIS
  lies at the S2 level (Moore, Clinically Oriented Anatomy, 5th ed. 2005, p. 534: the line through the
  dimples over both PSIS crosses the S2 spinous process); the tests check that level on real pelves.
* **IS.** Band between the PT-midpoint level and half-way to the ASIS level (APP frame), largest
  26-connected region per side, extreme points along the posterior direction tilted -30 ... 44 deg towards
  inferior (one vectorised product per tilt; the reference tilts -5 ... 44 deg), the left/right candidate
  pair with the smallest distance. Extremes on the band's lower or upper cut face (within 1.5 voxels) are
  left out: the ischial body below the spine is often more posterior than the spine, so with inferior
  tilts only the cut face wins, and which side of a near-tie wins depended on how the grid was stored (the
  right spine of a real pelvis jumped 34 mm, interspinous +19 mm, on a grid turned by 20-30 deg; the
  superior tilts find the spine's own prominence). Both conventions use this search.
* **Landmarks in world coordinates** (the reference reads them back in a COM-centred frame); the error is
  then the plain Euclidean distance in the shared world frame.

``convention="reference"`` reproduces the reference's definitions instead: one pass of PCA frame ->
quadrants split by the sagittal plane through the COM and the transverse plane at 0.6 x the distal midpoint
height + 0.4 x the maximal-width midpoint height (its ``lerp(distal, proximal, alpha=0.6)``; the xray3d
convention uses 0.4 / 0.6 about the maximal-width midpoint) -> ASIS / PT as the most anterior points of the
quadrants -> an APP frame whose x axis is the inter-PT direction -> ASIS / PT read once more from the same
quadrants in that frame (no iteration) -> IS in the same band -> PSIS from a plane raised in 2 mm steps
from the left ASIS height. Only the frame's orientation is taken from the world prior instead of the
reference's 180 deg flip check (the PCA axes are matched to the world axes), so a supine pelvis never
comes out upside down.

A partial pelvis is an error: one hip only (ASIS closer than ``min_inter_asis_mm``, at very different
heights, or a lopsided left/right volume), or a landmark on the border of the volume (cut by the field
of view).

Anatomical ranges used by the tests (adults, stated wide on purpose): inter-ASIS distance 190-280 mm
(CT of 200 adults: 227 +- 16 mm, i.e. the range is about mean +- 2-3 SD: "Variability in the range of
inter-anterior superior iliac spine distance and its correlation with femoral head centre. A prospective
computed tomography study of 200 adults", Skeletal Radiol 2009, doi:10.1007/s00256-009-0791-x),
inter-PSIS distance 60-120 mm (no source verified for this range), interspinous (IS-IS)
diameter 80-130 mm (the narrowest pelvic diameter, about 10 cm or slightly more in women: Williams
Obstetrics, chapter "Maternal anatomy", pelvic dimensions; MR pelvimetry of 710 women aged 21-50:
108.9 +- 8.0 mm, "Predicting mid-pelvic interspinous distance in women using height and pubic arch
angle", PLoS One 2023, doi:10.1371/journal.pone.0289814; men have narrower mid-pelvises, hence the
lower bound).
"""

from __future__ import annotations

import numpy as np

from xray3d.clinical.base import ClinicalError, check_convention, index_points_mm, validate_mask
from xray3d.clinical.geometry import (
    clean_components,
    crop_to_foreground,
    label_components,
    surface_points_mm,
    unit,
    voxel_spacing,
)

__all__ = ["LANDMARKS", "measure"]

LANDMARKS = (
    "asis_left",
    "asis_right",
    "pubic_tubercle_left",
    "pubic_tubercle_right",
    "ischial_spine_left",
    "ischial_spine_right",
    "psis_left",
    "psis_right",
)


def _initial_frame(points: np.ndarray) -> np.ndarray:
    """Rows = unit (right, anterior, superior) axes: PCA left-right axis, the rest from the world prior."""
    cov = np.cov((points - points.mean(0)).T)
    vals, vecs = np.linalg.eigh(cov)
    # the eigenvector best aligned with world x among the two largest (pelvis is widest left-right)
    cand = vecs[:, 1:]
    right = cand[:, int(np.argmax(np.abs(cand[0])))]
    right = right if right[0] > 0 else -right
    sup = unit(np.array([0.0, 0.0, 1.0]) - right[2] * right)
    ant = np.cross(sup, right)
    return np.stack([right, ant, sup])


def _asis_pt(q: np.ndarray, x_mid: float, z_t: float) -> tuple[int, int, int, int]:
    """Indices of the most anterior (max y) points of the four quadrants: ASIS R/L, PT R/L."""
    out = []
    for upper in (True, False):
        for right in (True, False):
            sel = ((q[:, 0] > x_mid) == right) & ((q[:, 2] > z_t) == upper)
            if not sel.any():
                raise ClinicalError(
                    "a quadrant of the pelvis is empty: the mask holds only part of the pelvis "
                    "(one hip, or the pubis/ilium cut off)"
                )
            ids = np.nonzero(sel)[0]
            out.append(int(ids[np.argmax(q[ids, 1])]))
    return out[0], out[1], out[2], out[3]


def _app_frame(asis_r: np.ndarray, asis_l: np.ndarray, ps: np.ndarray, ant_prior: np.ndarray) -> np.ndarray:
    """Rows = (right, anterior normal, superior) of the anterior pelvic plane."""
    x = unit(asis_r - asis_l)
    n = unit(np.cross(asis_r - asis_l, ps - asis_l))
    n = n if n @ ant_prior > 0 else -n
    return np.stack([x, n, np.cross(x, n)])


def _ischial_spines(
    idx: np.ndarray,
    vox: np.ndarray,
    crop_aff: np.ndarray,
    frame: np.ndarray,
    origin: np.ndarray,
    z_lo: float,
    z_hi: float,
) -> tuple[np.ndarray, np.ndarray]:
    """IS right/left: band between two heights, largest region per side, tilted posterior extremes.

    ``idx`` are the crop's foreground voxel indices and ``vox`` their world positions (mm).
    """
    q = (vox - origin) @ frame.T
    margin_mm = 1.5 * float(voxel_spacing(crop_aff).max())
    angles = np.radians(np.arange(-30, 45))
    dirs = np.stack([np.zeros_like(angles), -np.cos(angles), -np.sin(angles)], 1)  # frame coords
    cands = []
    for right in (True, False):
        sel = (q[:, 2] >= z_lo) & (q[:, 2] <= z_hi) & ((q[:, 0] > 0) == right)
        if sel.sum() < 10:
            raise ClinicalError("no ischium found between the pubis and the ASIS level on one side")
        # the band in its own bounding box (+1 background voxel), not in the whole crop
        lo = idx[sel].min(0) - 1
        band = np.zeros(tuple(idx[sel].max(0) - lo + 2), dtype=bool)
        band[tuple((idx[sel] - lo).T)] = True
        band_aff = crop_aff.copy()
        band_aff[:3, 3] = crop_aff[:3, :3] @ lo + crop_aff[:3, 3]
        lab, n = label_components(band, 26)
        if n > 1:
            band = lab == (int(np.argmax(np.bincount(lab.ravel())[1:])) + 1)
        pts = surface_points_mm(band, band_aff)
        qs = (pts - origin) @ frame.T
        best = np.argmax(qs @ dirs.T, axis=0)
        # an extreme on the band's lower / upper cut face is an artefact of the cut, not a spine: where the
        # cut falls between voxels depends on how the grid is stored and turned (34 mm jumps on a real
        # pelvis resampled onto a rotated grid)
        inside = (qs[best, 2] > z_lo + margin_mm) & (qs[best, 2] < z_hi - margin_mm)
        if not inside.any():
            raise ClinicalError(
                "no ischial spine found: the posterior border of the ischium has no prominence between the "
                "pubis and the ASIS level on one side"
            )
        cands.append(pts[best[inside]])
    dist = np.linalg.norm(cands[0][:, None, :] - cands[1][None, :, :], axis=2)
    i, j = np.unravel_index(int(np.argmin(dist)), dist.shape)
    return cands[0][i], cands[1][j]


def _psis(q: np.ndarray, z_start: float, step: float = 2.0) -> tuple[int, int]:
    """PSIS right/left (indices into ``q``): the reference's most posterior points above a transverse plane
    moved up until they are >= 10 mm from the midline and >= 20 mm apart."""
    z = z_start
    top = float(q[:, 2].max())
    while z < top:
        above = q[:, 2] > z
        found = []
        for right in (True, False):
            ids = np.nonzero(above & ((q[:, 0] > 0) == right))[0]
            if len(ids) == 0:
                break
            found.append(int(ids[np.argmin(q[ids, 1])]))
        if len(found) == 2:
            a, b = q[found[0]], q[found[1]]
            if abs(a[0]) >= 10.0 and abs(b[0]) >= 10.0 and np.linalg.norm(a - b) >= 20.0:
                return found[0], found[1]
        z += step
    raise ClinicalError("PSIS not found: no separated posterior iliac points above the ASIS level")


def _pubic_tubercles(
    q: np.ndarray, x_mid: float, z_lo: float, z_hi: float, half_width: float, tol_mm: float, bin_mm: float
) -> tuple[int, int]:
    """Pubic tubercles right/left (indices into ``q``, APP-frame surface points): the lateral ends of the
    anterior face of the pubic bodies.

    Per side, the pubis between heights ``z_lo`` and ``z_hi`` is binned by the lateral distance from the
    midline ``x_mid`` (``bin_mm`` bins up to ``half_width``). The anterior face is the run of bins, from the
    most anterior one outwards (single-bin gaps bridged), whose most anterior point is within ``tol_mm`` of
    the most anterior point of the pubis. The tubercle is the most anterior-superior face point (max of
    anterior + superior) of the last three bins of that run, where the pubic crest ends laterally and the
    superior ramus recedes.
    """
    out = []
    band = (q[:, 2] >= z_lo) & (q[:, 2] <= z_hi)
    for sign in (1.0, -1.0):
        lateral = sign * (q[:, 0] - x_mid)
        sel = band & (lateral >= 0.0) & (lateral <= half_width)
        ids = np.nonzero(sel)[0]
        if len(ids) < 10:
            raise ClinicalError(
                "no pubic bone found below the ASIS on one side: the pubis is missing or cut by the field "
                "of view"
            )
        bins = np.floor(lateral[ids] / bin_mm).astype(int)
        n_bins = int(bins.max()) + 1
        front = np.full(n_bins, -np.inf)
        np.maximum.at(front, bins, q[ids, 1])
        y_front = float(front.max())
        on_face = front >= y_front - tol_mm
        last = int(np.argmax(front))  # walk outwards from the front, across single-bin gaps (sparse bins)
        while last + 1 < n_bins and (on_face[last + 1] or (last + 2 < n_bins and on_face[last + 2])):
            last += 1 if on_face[last + 1] else 2
        # the tubercle's apex: the most anterior-superior face point of the last few bins (its width)
        cand = ids[(bins >= last - 2) & (bins <= last) & (q[ids, 1] >= y_front - tol_mm)]
        out.append(int(cand[np.argmax(q[cand, 1] + q[cand, 2])]))
    return out[0], out[1]


def _psis_anatomical(q: np.ndarray, x_lateral: float, tol_mm: float) -> tuple[int, int]:
    """PSIS right/left (indices into ``q``, APP-frame surface points relative to the ASIS midpoint).

    Per side, the ilium lateral of the sacrum (``|x| >= x_lateral``) above the ASIS level is searched for
    its most posterior extent; the PSIS is the lowest point of that posterior prominence (points within
    ``tol_mm`` of the extent): the posterior end of the iliac crest, where the posterior border turns
    forwards into the notch above the posterior inferior spine. The most posterior point alone lies
    anywhere on the flat posterior crest and lands up to 15-20 mm too superior.
    """
    out = []
    for sign in (1.0, -1.0):
        ids = np.nonzero((sign * q[:, 0] >= x_lateral) & (q[:, 2] >= 0.0))[0]
        if len(ids) == 0:
            raise ClinicalError(
                "PSIS not found: no iliac bone above the ASIS level lateral of the sacrum on one side"
            )
        back = float(q[ids, 1].min())
        prominence = ids[q[ids, 1] <= back + tol_mm]
        out.append(int(prominence[np.argmin(q[prominence, 2])]))
    return out[0], out[1]


def _reference_frame(points: np.ndarray) -> np.ndarray:
    """Rows = (right, anterior, superior): the PCA axes, the largest-variance one left-right as in the
    reference, the other two matched to the world superior / anterior axes and all signs from the world
    prior (the reference takes them in variance order, which swaps them when a pelvis is deeper than tall,
    and flips by 180 deg when its ASIS land below the maximal width)."""
    _, vecs = np.linalg.eigh(np.cov((points - points.mean(0)).T))
    right = vecs[:, 2]
    rest = vecs[:, :2]
    k = int(np.argmax(np.abs(rest[2])))
    sup, ant = rest[:, k], rest[:, 1 - k]
    right = right if right[0] > 0 else -right
    sup = sup if sup[2] > 0 else -sup
    ant = ant if ant @ np.cross(sup, right) > 0 else -ant
    return np.stack([right, ant, sup])


def _on_border(point: np.ndarray, affine: np.ndarray, shape: tuple[int, ...], tol: float = 1.0) -> bool:
    inv = np.linalg.inv(affine)
    idx = inv[:3, :3] @ point + inv[:3, 3]
    return bool(np.any(idx < tol - 0.5) or np.any(idx > np.asarray(shape) - 0.5 - tol))


def _landmarks_xray3d(
    q0: np.ndarray, pts: np.ndarray, frame: np.ndarray, x_mid: float, z_t: float, opts: dict
) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
    """ASIS by the iterated APP, anatomical PT and PSIS.

    Returns (surface-point indices, APP frame, APP origin = ASIS midpoint).

    The APP itself goes through the ASIS and the most anterior pubic points (its usual definition).
    """
    ia_r, ia_l, ip_r, ip_l = _asis_pt(q0, x_mid, z_t)
    ant_prior = frame[1]
    for _ in range(6):
        ps = 0.5 * (pts[ip_r] + pts[ip_l])
        app = _app_frame(pts[ia_r], pts[ia_l], ps, ant_prior)
        origin = 0.5 * (pts[ia_r] + pts[ia_l])
        q = (pts - origin) @ app.T
        z_t_app = 0.5 * ((ps - origin) @ app[2])  # half-way between the PT and ASIS levels
        new = _asis_pt(q, 0.0, z_t_app)
        if new == (ia_r, ia_l, ip_r, ip_l):
            break
        ia_r, ia_l, ip_r, ip_l = new
    ps = 0.5 * (pts[ip_r] + pts[ip_l])
    app = _app_frame(pts[ia_r], pts[ia_l], ps, ant_prior)
    origin = 0.5 * (pts[ia_r] + pts[ia_l])
    q = (pts - origin) @ app.T
    inter_asis = float(np.linalg.norm(pts[ia_r] - pts[ia_l]))
    x_ps, z_ps = float((ps - origin) @ app[0]), float((ps - origin) @ app[2])
    pt_r, pt_l = _pubic_tubercles(
        q,
        x_ps,
        z_ps - opts["pubis_depth_mm"],
        0.5 * z_ps,
        opts["pubis_half_width_fraction"] * inter_asis,
        opts["tubercle_tol_mm"],
        opts["tubercle_bin_mm"],
    )
    psis_r, psis_l = _psis_anatomical(q, opts["psis_lateral_fraction"] * inter_asis, opts["psis_tol_mm"])
    ids = {"asis_r": ia_r, "asis_l": ia_l, "apex_r": ip_r, "apex_l": ip_l, "pt_r": pt_r, "pt_l": pt_l}
    ids.update(psis_r=psis_r, psis_l=psis_l)
    return ids, app, origin


def _landmarks_reference(
    pts: np.ndarray, vox: np.ndarray, com: np.ndarray
) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
    """The reference's single pass: PCA frame, quadrants about the COM, split height 0.6 distal + 0.4 MWP,
    ASIS/PT re-read once in the APP frame (inter-PT x axis) from the same quadrants, PSIS plane from the
    left ASIS height. Returns (surface-point indices, APP frame, COM)."""
    frame = _reference_frame(vox)
    q = (pts - com) @ frame.T
    i_min, i_max = int(np.argmin(q[:, 0])), int(np.argmax(q[:, 0]))
    z_mwp = 0.5 * (q[i_min, 2] + q[i_max, 2])
    right = q[:, 0] > 0.0
    if right.all() or not right.any():
        raise ClinicalError("the pelvis does not cross its own midline: a partial pelvis")
    z_distal = 0.5 * (float(q[right, 2].min()) + float(q[~right, 2].min()))
    z_t = 0.6 * z_distal + 0.4 * z_mwp  # the reference's lerp(distal, proximal, alpha=0.6)
    ia_r, ia_l, ip_r, ip_l = _asis_pt(q, 0.0, z_t)
    upper = q[:, 2] > z_t
    ps = 0.5 * (pts[ip_r] + pts[ip_l])
    normal = unit(np.cross(pts[ia_r] - pts[ia_l], ps - pts[ia_l]))
    normal = normal if normal @ frame[1] > 0 else -normal
    x_axis = pts[ip_r] - pts[ip_l]  # the reference's APP x axis: inter-PT, made orthogonal to the normal
    x_axis = unit(x_axis - (x_axis @ normal) * normal)
    app = np.stack([x_axis, normal, np.cross(x_axis, normal)])
    q = (pts - com) @ app.T
    picks = []
    for is_upper in (True, False):
        for is_right in (True, False):
            ids = np.nonzero((upper == is_upper) & (right == is_right))[0]
            picks.append(int(ids[np.argmax(q[ids, 1])]))
    ia_r, ia_l, ip_r, ip_l = picks
    psis_r, psis_l = _psis(q, float(q[ia_l, 2]))
    ids = {"asis_r": ia_r, "asis_l": ia_l, "apex_r": ip_r, "apex_l": ip_l, "pt_r": ip_r, "pt_l": ip_l}
    ids.update(psis_r=psis_r, psis_l=psis_l)
    return ids, app, com


def measure(
    mask: np.ndarray,
    affine: np.ndarray,
    *,
    min_volume_mm3: float = 150_000.0,
    keep_fraction: float = 0.1,
    min_inter_asis_mm: float = 170.0,
    max_obliquity_deg: float = 25.0,
    max_side_ratio: float = 2.0,
    convention: str = "xray3d",
    tubercle_tol_mm: float = 4.0,
    tubercle_bin_mm: float = 2.0,
    pubis_depth_mm: float = 40.0,
    pubis_half_width_fraction: float = 0.3,
    psis_lateral_fraction: float = 0.15,
    psis_tol_mm: float = 2.0,
) -> dict[str, float | list[float]]:
    """Measure pelvic landmarks and the anterior pelvic plane on a binary pelvis mask.

    Args:
        mask: 3D mask of a whole pelvis (both hip bones; the sacrum may be included), any voxel order.
        affine: 4x4 voxel-to-world matrix (mm), world RAS+ (the pelvis roughly in anatomical orientation).
        min_volume_mm3: smaller bone volumes are rejected as too small.
        keep_fraction: 26-connected pieces smaller than this fraction of the largest are dropped (the
            hip bones and the sacrum may be separate pieces, so large pieces are all kept).
        min_inter_asis_mm: closer ASIS mean only one hip bone is present.
        max_obliquity_deg: larger height difference of the two ASIS (angle of the inter-ASIS line to the
            world left-right axis, about the AP axis) means a partial or fragmented pelvis.
        max_side_ratio: larger left/right bone-volume ratio (about the midline) means a partial pelvis.
        convention: ``"xray3d"`` (anatomical pubic tubercles and PSIS, iterated APP) or ``"reference"``
            (the reference's single-pass frame, split height and extreme-point landmarks).
        tubercle_tol_mm: the anterior face of the pubis is where it lies within this of its front.
        tubercle_bin_mm: width of the lateral bins of the pubis profile (at least the largest voxel size).
        pubis_depth_mm: the pubis is searched from this far below the APP's pubic point up to half-way to
            the ASIS level.
        pubis_half_width_fraction: lateral extent of the pubis search, as a fraction of the inter-ASIS
            distance (0.3: about 70 mm, medial of the acetabulum).
        psis_lateral_fraction: the PSIS is searched lateral of this fraction of the inter-ASIS distance
            from the midline (0.15: about 35 mm, lateral of the sacrum's dorsal surface).
        psis_tol_mm: the posterior prominence of the ilium is where it lies within this of its back.

    Returns:
        ``<landmark>_xyz_mm`` for :data:`LANDMARKS` plus ``pubic_symphysis_xyz_mm`` (midpoint of the most
        anterior pubic points, the APP's third point), ``app_origin_xyz_mm`` (ASIS midpoint),
        ``app_normal_{x,y,z}_deg`` (angles of the anterior APP normal to the world axes), ``app_tilt_deg``
        (rotation of the APP about the world left-right axis, positive = ASIS anterior to the pubis),
        ``app_obliquity_deg``, ``inter_asis_mm``, ``inter_psis_mm``, ``inter_pubic_tubercle_mm``,
        ``interspinous_mm`` and ``fragments_removed``.

    Raises:
        ClinicalError: empty/too small/NaN mask, a partial pelvis, or landmarks on the volume border.
        ConventionError: an unknown ``convention``.
    """
    check_convention(convention)
    affine = np.asarray(affine, dtype=float)
    binary = validate_mask(mask, affine, min_voxels=20, what="pelvis mask")
    vol = float(abs(np.linalg.det(affine[:3, :3])))
    if binary.sum() * vol < min_volume_mm3:
        raise ClinicalError(
            f"pelvis mask volume {binary.sum() * vol / 1000:.0f} cm^3 is below "
            f"{min_volume_mm3 / 1000:.0f} cm^3: "
            "too small for a pelvis (wrong spacing in the affine, or a failed prediction)"
        )
    crop, crop_aff = crop_to_foreground(binary, affine)
    crop, removed = clean_components(crop, keep_fraction, None, "pelvis mask")
    idx = np.argwhere(crop)
    vox = index_points_mm(idx, crop_aff)
    com = vox.mean(0)
    pts = surface_points_mm(crop, crop_aff)

    # PCA / world-prior frame, maximal pelvic width, transverse plane
    frame = _initial_frame(vox)
    q = (pts - com) @ frame.T
    i_min, i_max = int(np.argmin(q[:, 0])), int(np.argmax(q[:, 0]))
    x_mid = 0.5 * (q[i_min, 0] + q[i_max, 0])
    z_mwp = 0.5 * (q[i_min, 2] + q[i_max, 2])
    qv = (vox - com) @ frame.T
    right_side = qv[:, 0] > x_mid
    n_r, n_l = int(right_side.sum()), int((~right_side).sum())
    if min(n_r, n_l) == 0 or max(n_r, n_l) / min(n_r, n_l) > max_side_ratio:
        raise ClinicalError(
            f"pelvis is lopsided (right/left bone volume {n_r}:{n_l} about the midline): only one hip bone "
            "or a partial pelvis"
        )
    if convention == "reference":
        ids, app, origin = _landmarks_reference(pts, vox, com)
    else:
        low = [float(q[(q[:, 0] > x_mid) == side, 2].min()) for side in (True, False)]
        z_t = float(np.mean(low)) + 0.6 * (z_mwp - float(np.mean(low)))
        opts = {
            "tubercle_tol_mm": tubercle_tol_mm,
            "tubercle_bin_mm": max(tubercle_bin_mm, float(voxel_spacing(affine).max())),
            "pubis_depth_mm": pubis_depth_mm,
            "pubis_half_width_fraction": pubis_half_width_fraction,
            "psis_lateral_fraction": psis_lateral_fraction,
            "psis_tol_mm": psis_tol_mm,
        }
        ids, app, origin = _landmarks_xray3d(q, pts, frame, x_mid, z_t, opts)
    asis_r, asis_l = pts[ids["asis_r"]], pts[ids["asis_l"]]
    pt_r, pt_l = pts[ids["pt_r"]], pts[ids["pt_l"]]
    ps = 0.5 * (pts[ids["apex_r"]] + pts[ids["apex_l"]])
    inter_asis = float(np.linalg.norm(asis_r - asis_l))
    if inter_asis < min_inter_asis_mm:
        raise ClinicalError(
            f"the two ASIS are only {inter_asis:.0f} mm apart (< {min_inter_asis_mm:.0f} mm): the mask holds "
            "only one hip bone (partial pelvis)"
        )
    inter_asis_dir = unit(asis_r - asis_l)
    obliquity = float(np.degrees(np.arcsin(np.clip(abs(inter_asis_dir[2]), 0.0, 1.0))))
    if obliquity > max_obliquity_deg:
        raise ClinicalError(
            f"the two ASIS differ in height by {obliquity:.0f} deg (> {max_obliquity_deg:.0f}): the mask "
            "holds only one hip bone or a partial pelvis"
        )
    asis_mid = 0.5 * (asis_r + asis_l)
    z_ps = float((ps - origin) @ app[2])
    z_asis = float((asis_mid - origin) @ app[2])
    is_r, is_l = _ischial_spines(idx, vox, crop_aff, app, origin, z_ps, 0.5 * (z_ps + z_asis))
    psis_r, psis_l = pts[ids["psis_r"]], pts[ids["psis_l"]]

    points = {
        "asis_left": asis_l,
        "asis_right": asis_r,
        "pubic_tubercle_left": pt_l,
        "pubic_tubercle_right": pt_r,
        "ischial_spine_left": is_l,
        "ischial_spine_right": is_r,
        "psis_left": psis_l,
        "psis_right": psis_r,
    }
    for name, p in {**points, "pubic_symphysis": ps}.items():
        if _on_border(p, affine, binary.shape):
            raise ClinicalError(
                f"landmark {name} lies on the border of the volume: the pelvis is cut by the field of view"
            )
    normal = app[1]
    result: dict[str, float | list[float]] = {f"{k}_xyz_mm": [float(v) for v in p] for k, p in points.items()}
    result["pubic_symphysis_xyz_mm"] = [float(v) for v in ps]
    result["app_origin_xyz_mm"] = [float(v) for v in asis_mid]
    for axis, name in enumerate("xyz"):
        result[f"app_normal_{name}_deg"] = float(np.degrees(np.arccos(np.clip(normal[axis], -1, 1))))
    result["app_tilt_deg"] = float(np.degrees(np.arctan2(-normal[2], normal[1])))
    result["app_obliquity_deg"] = float(np.degrees(np.arctan2(inter_asis_dir[2], inter_asis_dir[0])))
    result["inter_asis_mm"] = inter_asis
    result["inter_psis_mm"] = float(np.linalg.norm(psis_r - psis_l))
    result["inter_pubic_tubercle_mm"] = float(np.linalg.norm(pt_r - pt_l))
    result["interspinous_mm"] = float(np.linalg.norm(is_r - is_l))
    result["fragments_removed"] = float(removed)
    for key, value in result.items():
        if not np.all(np.isfinite(value)):
            raise ClinicalError(f"pelvis measurement produced a non-finite {key}")
    return result
