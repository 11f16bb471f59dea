"""Tests of the automatic pelvic landmarks (phantom with landmarks known by construction + a real pelvis)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from xray3d.clinical import ClinicalError, clinical_errors
from xray3d.clinical.hip import LANDMARKS, measure

SHARED_DATA = Path(
    os.environ.get("XRAY3D_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")
)
HIP = SHARED_DATA / "xrayto3d-masks" / "COLONOG-0001_hip_msk.nii.gz"


def _ellipsoid(p, c, axes):
    return (((p - c) / np.asarray(axes)) ** 2).sum(1) <= 1.0


def _capsule(p, a, b, r):
    ab = b - a
    t = np.clip((p - a) @ ab / (ab @ ab), 0.0, 1.0)
    return np.linalg.norm(p - a - t[:, None] * ab, axis=1) <= r


def _box(p, lo, hi):
    return np.all((p >= lo) & (p <= hi), axis=1)


def _cone(p, base, tip, r):
    """Solid cone from a disc of radius ``r`` at ``base`` to a point at ``tip``."""
    ab = tip - base
    length = np.linalg.norm(ab)
    t = (p - base) @ ab / length**2
    radial = np.linalg.norm(p - base - t[:, None] * ab, axis=1)
    return (t >= 0) & (t <= 1) & (radial <= r * (1 - t))


@functools.lru_cache(maxsize=4)
def _phantom_cached(seed: int | None) -> tuple[np.ndarray, np.ndarray, dict]:
    """The phantom, unrotated (``None``) or rotated by up to 20 deg per Euler angle, built once."""
    if seed is None:
        return pelvis_phantom()
    angles = np.random.default_rng(seed).uniform(-20, 20, size=3)
    return pelvis_phantom(Rotation.from_euler("xyz", angles, degrees=True).as_matrix())


def pelvis_phantom(rotation: np.ndarray | None = None, spacing: float = 1.5, half: bool = False):
    """Pelvis-like phantom in RAS mm (x right, y anterior, z superior) with landmarks known by construction.

    Iliac wings (ellipsoids), pillars to ischial blobs, a pubic bar (the superior rami) and a sacrum with a
    bar. The ASIS are anterior cone tips, the ischial spines posterior-medial cone tips. The pubic bodies
    are a box whose anterior face (y = 20) ends laterally at x = +-25 mm in a small spherical tubercle at
    its superior border (1.5 mm proud); two ridges 6 mm either side of the midline (the symphyseal
    margins) project 3.5 mm forward, so the most anterior points of the pubis lie next to the midline, not
    at the tubercles. Each posterior ilium carries a capsule whose posterior line leans 2 mm backwards from
    its inferior end (the PSIS, the posterior end of the crest) to its superior end, so the most posterior
    point of the ilium is 38 mm above the PSIS. Returns (mask, affine, true landmarks).
    """
    rot = np.eye(3) if rotation is None else rotation
    prims = []  # (kind, args)
    tips = {}
    for s, side in ((1, "right"), (-1, "left")):
        v = np.array([s, 1, 1.0])
        prims.append(("ell", (np.array([95.0, -10, 80]) * v, (35, 12, 45))))
        prims.append(("cap", (np.array([85.0, -20, -40]) * v, np.array([90.0, -10, 70]) * v, 14)))
        prims.append(("ell", (np.array([85.0, -25, -40]) * v, (15, 15, 15))))
        cones = {
            "asis": (np.array([100.0, -10, 95]), np.array([115.0, 25, 100]), 12),
            "ischial_spine": (np.array([85.0, -18, 20]), np.array([45.0, -60, 12]), 18),
        }
        for name, (base, tip, r) in cones.items():
            prims.append(("cone", (base * v, tip * v, r)))
            tips[f"{name}_{side}"] = tip * v
        # pubic tubercle: a sphere on the lateral-superior corner of the pubic body's anterior face
        tubercle = np.array([25.0, 17.5, 6.0])
        prims.append(("ell", (tubercle * v, (4.0, 4.0, 4.0))))
        tips[f"pubic_tubercle_{side}"] = (tubercle + 4.0 * np.array([0.0, 1.0, 1.0]) / np.sqrt(2)) * v
        # PSIS: posterior iliac capsule (radius 8) from the spine (z 112) up to the crest (z 150), joined to
        # the wing by a bar that stays anterior of it
        low, high = np.array([50.0, -82.0, 112.0]), np.array([50.0, -84.0, 150.0])
        prims.append(("cap", (low * v, high * v, 8.0)))
        prims.append(("cap", (np.array([85.0, -10, 130]) * v, np.array([55.0, -74, 130]) * v, 6.0)))
        tips[f"psis_{side}"] = (low + np.array([0.0, -8.0, 0.0])) * v
    prims.append(("cap", (np.array([-85.0, -15, 0]), np.array([85.0, -15, 0]), 9)))
    prims.append(("box", (np.array([-25.0, -15, -12]), np.array([25.0, 20, 6]))))  # pubic bodies
    for x in (-6.0, 6.0):  # the symphyseal margins of the two pubic bodies
        prims.append(("cap", (np.array([x, 19.5, -10]), np.array([x, 19.5, 2]), 4)))
    prims.append(("ell", (np.array([0.0, -60, 85]), (35, 15, 35))))
    prims.append(("cap", (np.array([-70.0, -45, 75]), np.array([70.0, -45, 75]), 10)))
    centre = np.array([0.0, -30, 30])

    def world(v):
        return rot @ (v - centre) + centre

    lo = np.array([-140.0, -100, -62])
    hi = np.array([140.0, 40, 170])
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    wc = np.array([world(c) for c in corners])
    g_lo, g_hi = wc.min(0) - 3, wc.max(0) + 3
    shape = tuple(np.ceil((g_hi - g_lo) / spacing).astype(int))
    # PIR-like voxel order: array axes = (posterior, inferior, right)
    affine = np.zeros((4, 4))
    affine[3, 3] = 1
    affine[1, 0], affine[2, 1], affine[0, 2] = -spacing, -spacing, spacing
    affine[:3, 3] = [g_lo[0], g_hi[1], g_hi[2]]
    arr_shape = (shape[1], shape[2], shape[0])
    idx = np.indices(arr_shape).reshape(3, -1).T.astype(float)
    p_world = idx @ affine[:3, :3].T + affine[:3, 3]
    p = (p_world - centre) @ rot + centre  # back to the phantom frame
    inside = np.zeros(len(p), dtype=bool)
    for kind, args in prims:
        if kind == "ell":
            lo_b, hi_b = args[0] - np.asarray(args[1]), args[0] + np.asarray(args[1])
        elif kind == "box":
            lo_b, hi_b = args
        else:
            lo_b, hi_b = np.minimum(args[0], args[1]) - args[2], np.maximum(args[0], args[1]) + args[2]
        ids = np.nonzero(np.all((p >= lo_b) & (p <= hi_b), axis=1))[0]  # bounding box first (speed)
        inside[ids] |= {"ell": _ellipsoid, "cap": _capsule, "cone": _cone, "box": _box}[kind](p[ids], *args)
    if half:
        inside &= p[:, 0] < 5.0  # left hip only (plus half of the pubis and sacrum)
    truth = {k: world(v) for k, v in tips.items()}
    return inside.reshape(arr_shape), affine, truth


def _check_phantom(result: dict, truth: dict, tol: float = 4.0) -> None:
    """Landmarks within ``tol`` mm (1.5 mm voxels: ~1.3 mm quantisation + ~2 mm lost at the cone tips); the
    PSIS within ``tol + 1`` (the lowest point of a 2 mm deep posterior prominence on a voxelised capsule)."""
    for name in LANDMARKS:
        err = np.linalg.norm(np.asarray(result[f"{name}_xyz_mm"]) - truth[name])
        assert err <= tol + (1.0 if name.startswith("psis") else 0.0), (name, err)
    assert result["inter_asis_mm"] == pytest.approx(
        np.linalg.norm(truth["asis_left"] - truth["asis_right"]), abs=6
    )


def test_phantom_landmarks_known_by_construction() -> None:
    mask, affine, truth = _phantom_cached(None)
    r = measure(mask, affine)
    _check_phantom(r, truth)
    assert abs(r["app_tilt_deg"]) < 2.0 and abs(r["app_obliquity_deg"]) < 2.0
    assert r["app_normal_y_deg"] < 2.0


@pytest.mark.parametrize("seed", [0, 1])
def test_phantom_rotation_stable(seed: int) -> None:
    angles = np.random.default_rng(seed).uniform(-20, 20, size=3)
    rot = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    mask, affine, truth = _phantom_cached(seed)
    r = measure(mask, affine)
    _check_phantom(r, truth)
    # the APP tilt follows the rotation about the world left-right axis
    normal = rot @ np.array([0.0, 1.0, 0.0])
    assert r["app_tilt_deg"] == pytest.approx(np.degrees(np.arctan2(-normal[2], normal[1])), abs=2.0)


def test_shift_gives_known_point_errors_and_fragments() -> None:
    mask, affine, _ = _phantom_cached(None)
    gt = measure(mask, affine)
    moved = affine.copy()
    moved[:3, 3] += [0.0, 6.0, -8.0]
    speck = mask.copy()
    speck[1:3, 1:3, 1:3] = True  # a small stray fragment is dropped and counted
    pred = measure(speck, moved)
    assert pred["fragments_removed"] == gt["fragments_removed"] + 1.0
    errs = clinical_errors(gt, pred)
    for name in LANDMARKS:
        assert errs[f"{name}_err_mm"] == pytest.approx(10.0, abs=1e-6)
    assert errs["inter_asis_err_mm"] == pytest.approx(0.0, abs=1e-6)


def test_broken_pelvis_predictions_raise() -> None:
    mask, affine, _ = _phantom_cached(None)
    with pytest.raises(ClinicalError, match="foreground voxels"):
        measure(np.zeros_like(mask), affine)
    nan_mask = mask.astype(np.float32)
    nan_mask[5, 5, 5] = np.nan
    with pytest.raises(ClinicalError, match="NaN"):
        measure(nan_mask, affine)
    with pytest.raises(ClinicalError, match="too small"):
        measure(mask, affine / np.array([[4], [4], [4], [1]]) * np.array([1, 1, 1, 1]))
    half, half_aff, _ = pelvis_phantom(half=True)
    with pytest.raises(ClinicalError, match="one hip|lopsided|partial"):
        measure(half, half_aff)
    # the pubis cut off by the field of view (inferior border at z = 3 mm): landmarks on the border
    row = int((affine[2, 3] - 3.0) / -affine[2, 1])  # array axis 1 runs inferior
    with pytest.raises(ClinicalError, match="border"):
        measure(mask[:, :row, :], affine)


def test_hip_on_a_128_cube_is_padding_invariant() -> None:
    """The phantom inside a 128^3 ROI (the evaluation size) gives the same landmarks as its tight grid."""
    mask, affine, _ = pelvis_phantom(spacing=2.25)
    cube = np.zeros((128, 128, 128), dtype=bool)
    cube[: mask.shape[0], : mask.shape[1], : mask.shape[2]] = mask
    tight, padded = measure(mask, affine), measure(cube, affine)
    for key, value in tight.items():
        assert np.allclose(padded[key], value, atol=1e-6), key


def test_real_colonog_pelvis() -> None:
    nib = pytest.importorskip("nibabel")
    if not HIP.exists():
        pytest.skip(f"real mask {HIP} not available (set XRAY3D_SHARED_DATA)")
    img = nib.load(HIP)
    step = 2  # 0.78 mm -> about 1.6 mm for speed
    mask = np.asanyarray(img.dataobj)[::step, ::step, ::step] > 0
    affine = img.affine.copy()
    affine[:3, :3] *= step
    r = measure(mask, affine)
    print({k: np.round(v, 1) for k, v in r.items()})
    # adult ranges (sources in xray3d/clinical/hip.py), stated conservatively
    assert 190.0 <= r["inter_asis_mm"] <= 280.0
    assert 60.0 <= r["inter_psis_mm"] <= 120.0
    assert 80.0 <= r["interspinous_mm"] <= 130.0
    # anatomical order in the world (RAS) frame: right landmarks at larger x, ASIS anterior to PSIS,
    # ASIS above the pubic tubercles, ischial spines posterior to the pubis
    for name in ("asis", "pubic_tubercle", "ischial_spine", "psis"):
        assert r[f"{name}_right_xyz_mm"][0] > r[f"{name}_left_xyz_mm"][0]
    for side in ("left", "right"):
        assert r[f"asis_{side}_xyz_mm"][1] - r[f"psis_{side}_xyz_mm"][1] > 80.0
        assert r[f"asis_{side}_xyz_mm"][2] - r[f"pubic_tubercle_{side}_xyz_mm"][2] > 60.0
        assert r[f"pubic_tubercle_{side}_xyz_mm"][1] - r[f"ischial_spine_{side}_xyz_mm"][1] > 50.0
    assert abs(r["app_tilt_deg"]) < 30.0
    # a coarser sampling of the same pelvis gives nearly the same landmarks
    coarse = measure(np.asanyarray(img.dataobj)[::3, ::3, ::3] > 0, img.affine @ np.diag([3, 3, 3, 1]))
    errs = clinical_errors(r, coarse)
    assert max(errs[f"{n}_err_mm"] for n in LANDMARKS) < 8.0


def test_pubic_tubercles_and_psis_by_their_anatomical_definitions() -> None:
    """The phantom's most anterior pubic points are the symphyseal margins 6 mm from the midline and its
    most posterior iliac points are 38 mm above the PSIS: the tubercles (lateral end of the pubic crest)
    and the PSIS (posterior end of the crest) are found where they are by construction."""
    mask, affine, truth = _phantom_cached(None)
    r = measure(mask, affine)
    for side in ("left", "right"):
        assert (
            np.linalg.norm(np.asarray(r[f"pubic_tubercle_{side}_xyz_mm"]) - truth[f"pubic_tubercle_{side}"])
            < 2.5
        )
        assert abs(r[f"psis_{side}_xyz_mm"][2] - truth[f"psis_{side}"][2]) < 5.0
    assert r["inter_pubic_tubercle_mm"] == pytest.approx(50.0, abs=3.0)
    assert abs(r["pubic_symphysis_xyz_mm"][0]) < 3.0  # the APP still goes through the anterior pubis


def test_reference_convention_keeps_the_reference_extreme_points() -> None:
    """``convention="reference"``: PT = most anterior point of the lower quadrants (the symphyseal margins,
    15-25 mm medial of the tubercles), PSIS = most posterior point above a plane raised from the ASIS level
    (the top of the posterior crest); ASIS and ischial spines agree with the xray3d convention."""
    mask, affine, truth = _phantom_cached(None)
    ours, ref = measure(mask, affine), measure(mask, affine, convention="reference")
    for side in ("left", "right"):
        assert abs(ref[f"pubic_tubercle_{side}_xyz_mm"][0]) < 12.0  # next to the midline
        assert ref[f"psis_{side}_xyz_mm"][2] - truth[f"psis_{side}"][2] > 25.0  # on the crest's top
        for name in ("asis", "ischial_spine"):
            key = f"{name}_{side}_xyz_mm"
            assert np.linalg.norm(np.subtract(ref[key], ours[key])) < 3.0, key
    assert ref["inter_pubic_tubercle_mm"] < 25.0 < ours["inter_pubic_tubercle_mm"]


def test_unknown_convention_is_a_clear_error() -> None:
    from xray3d.clinical.base import ConventionError

    mask, affine, _ = _phantom_cached(None)
    with pytest.raises(ConventionError, match=r"clinical.convention='fischer'.*xray3d, reference"):
        measure(mask, affine, convention="fischer")


def _st_mm(r: dict, side: str) -> float:
    """Distance of a pubic tubercle from the inter-ASIS line (the 'ST' segment of the hernia literature)."""
    a_l, a_r = np.asarray(r["asis_left_xyz_mm"]), np.asarray(r["asis_right_xyz_mm"])
    u = (a_r - a_l) / np.linalg.norm(a_r - a_l)
    p = np.asarray(r[f"pubic_tubercle_{side}_xyz_mm"]) - a_l
    return float(np.linalg.norm(p - (p @ u) * u))


def _check_pubis_and_psis(r: dict) -> None:
    """Anatomical distances (adults, stated wide) that the tubercles and PSIS must satisfy.

    * Inter-tubercle distance 40-65 mm: the tubercles are the lateral ends of the pubic crests (Dagdelen &
      Benlier 2022, "An optimal palpation method to locate the pubic tubercle", J Anat Soc India 71:154-5,
      doi:10.4103/jasi.jasi_143_21: "the most lateral prominent swelling of the pubic crest"). No published
      inter-tubercle mean was verified; five raters put them 49-56 mm apart on two real pelves (issue 14),
      where extreme-point tubercles land 20-30 mm apart.
    * Tubercle to inter-ASIS line ("ST") 60-120 mm: > 75 mm in 23 of 33 inguinal regions (Lopez-Cano et
      al. 2005, Hernia 9:56-61, "Anthropometric characteristics of the pubic arch and proper function of
      the defense mechanisms against hernia formation"); radiological ST 81.5 mm cut-off and 94.5 +- 10.2 mm
      in indirect-hernia patients ("Association of low-lying pubic tubercle in patients with inguinal
      hernia", abstract at discovery.researcher.life).
    * ASIS-tubercle distance 100-160 mm: the inguinal ligament's span, here bounded by the ST range above and
      the inter-ASIS range (190-280 mm, sources in xray3d/clinical/hip.py) with the tubercles 20-33 mm from
      the midline: sqrt(60^2 + 62^2) = 86 ... sqrt(120^2 + 120^2) = 170, narrowed to what adult pelves give.
    """
    assert 40.0 <= r["inter_pubic_tubercle_mm"] <= 65.0
    ps = np.asarray(r["pubic_symphysis_xyz_mm"])
    for side in ("left", "right"):
        pt = np.asarray(r[f"pubic_tubercle_{side}_xyz_mm"])
        assert 15.0 <= abs(pt[0] - ps[0]) <= 35.0, side  # lateral of the symphysis
        assert 60.0 <= _st_mm(r, side) <= 120.0, side
        asis_pt = np.linalg.norm(np.asarray(r[f"asis_{side}_xyz_mm"]) - pt)
        assert 100.0 <= asis_pt <= 160.0, side
    assert 60.0 <= r["inter_psis_mm"] <= 120.0


def test_real_colonog_pubic_tubercles_and_psis() -> None:
    """CTPelvic1K COLONOG-0001 (both hips + sacrum, 0.78 mm, sampled at 1.6 mm). The PSIS lies at the S2
    level (Moore, Clinically Oriented Anatomy, 5th ed. 2005, p. 534: the line joining the dimples over the
    PSIS crosses the S2 spinous process), so well below the top of the sacrum (the S1 superior endplate)."""
    nib = pytest.importorskip("nibabel")
    if not HIP.exists():
        pytest.skip(f"real mask {HIP} not available (set XRAY3D_SHARED_DATA)")
    img = nib.load(HIP)
    mask = np.asanyarray(img.dataobj)[::2, ::2, ::2] > 0
    affine = img.affine @ np.diag([2, 2, 2, 1])
    r = measure(mask, affine)
    _check_pubis_and_psis(r)
    world = np.argwhere(mask) @ affine[:3, :3].T + affine[:3, 3]
    midline = np.abs(world[:, 0] - r["pubic_symphysis_xyz_mm"][0]) < 10.0
    sacral_top = world[midline, 2].max()
    for side in ("left", "right"):
        assert 20.0 <= sacral_top - r[f"psis_{side}_xyz_mm"][2] <= 70.0, side


def test_real_totalsegmentator_pelvis_psis_at_s2() -> None:
    """TotalSegmentator example (3 mm; hip_left + hip_right + sacrum as the benchmark merges them; the
    inferior pubis is cut by the scan). Its own S1 label (vertebrae_S1) gives the level check: a PSIS at S2
    (Moore 2005, see above) lies below the middle of the S1 body and at most one vertebra below it."""
    nib = pytest.importorskip("nibabel")
    path = SHARED_DATA / "totalsegmentator-example" / "example_seg.nii.gz"
    if not path.exists():
        pytest.skip(f"real segmentation {path} not available (set XRAY3D_SHARED_DATA)")
    img = nib.load(path)
    labels = np.asanyarray(img.dataobj)
    r = measure(np.isin(labels, (77, 78, 25)), img.affine)
    _check_pubis_and_psis(r)
    s1 = np.argwhere(labels == 26) @ img.affine[:3, :3].T + img.affine[:3, 3]
    s1_bottom, s1_mid = s1[:, 2].min(), 0.5 * (s1[:, 2].min() + s1[:, 2].max())
    for side in ("left", "right"):
        assert s1_bottom - 30.0 <= r[f"psis_{side}_xyz_mm"][2] <= s1_mid, side
    # the reference's extreme points on the same pelvis: tubercles next to the midline, PSIS higher
    ref = measure(np.isin(labels, (77, 78, 25)), img.affine, convention="reference")
    assert ref["inter_pubic_tubercle_mm"] < 30.0
    assert min(ref[f"psis_{s}_xyz_mm"][2] for s in ("left", "right")) > s1_mid
