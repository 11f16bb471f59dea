"""The hip and vertebra measurements of a real bone do not depend on how its mask is stored.

The same real masks (CTPelvic1K COLONOG-0001 pelvis, VerSe subject 004 L4 and L5) are re-stored:

* with permuted / flipped voxel axes (LPS, RPI, SLP, ILA, RAS, LAS, PIL: ``nibabel``'s ``as_reoriented``,
  so every voxel keeps its world position): the same voxels, so the same answer up to floating-point noise;
* resampled onto a grid turned by 20-30 deg (an oblique affine) or onto an anisotropic grid (linear
  interpolation of the mask, threshold 0.5): the bone is re-voxelised, so the answer may move by about a
  voxel (points) or by the resampling noise of the parameter (lengths, angles).

World points are compared by their Euclidean distance, scalars by their absolute difference, against the
measurement of the mask as it is stored in the data set.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from xray3d.clinical import hip, vertebra

nib = pytest.importorskip("nibabel")
orientations = pytest.importorskip("nibabel.orientations")

SHARED_DATA = Path(
    os.environ.get("XRAY3D_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")
)
MASKS = SHARED_DATA / "xrayto3d-masks"
CASES = {
    # name: (file, stride of the stored grid (0.78 mm -> 1.56 mm for the pelvis, for speed), module)
    "hip": ("COLONOG-0001_hip_msk.nii.gz", 2, hip),
    "L4": ("sub-verse004_vert-23-seg-vert_msk.nii.gz", 1, vertebra),
    "L5": ("sub-verse004_vert-24-seg-vert_msk.nii.gz", 1, vertebra),
}
CONVENTIONS = ("xray3d", "reference")
#: right-handed (LPS, RPI, SLP, ILA, RAS) and mirrored (LAS, PIL: negative determinant) voxel orders
REORIENTATIONS = ("LPS", "RPI", "SLP", "ILA", "RAS", "LAS", "PIL")
#: rigid turns of the grid (xyz Euler angles, deg)
OBLIQUE = {"oblique-a": (20.0, -15.0, 25.0), "oblique-b": (0.0, 0.0, 30.0), "oblique-c": (-25.0, 20.0, 0.0)}
#: anisotropic voxel sizes (mm) along the world x, y, z grid axes, as scanners store them
ANISOTROPIC = {"thick-axial": (1.0, 1.0, 2.5), "thick-lateral": (2.5, 1.0, 1.0), "thick-ap": (1.0, 2.5, 1.0)}

#: pure reorientations store the same voxels: the answer is the same up to floating-point noise
SAME_VOXELS_TOL = 0.05
#: a re-voxelised bone: (point distance mm, length mm, angle deg), per anatomy; a point, and a length, may
#: also move by 1.5 voxels of the coarsest axis of the new grid
RESAMPLED_TOL = {"hip": (4.5, 3.0, 1.0), "L4": (3.0, 2.5, 2.5), "L5": (3.0, 2.5, 2.5)}
TOL_VOXELS = 1.5
#: the reference convention's pubic tubercles (most anterior points of the lower quadrants) and PSIS (most
#: posterior point above a raised plane) are extreme points of flat bone faces: on a re-voxelised pelvis
#: the extreme jumps between near-tied points far apart (7 mm PT, 24 mm PSIS on the 2.5 mm AP grid). That
#: is the reference's definition, kept as it is; these keys are compared on identical voxels only.
REFERENCE_HIP_EXTREMES = (
    "pubic_tubercle_left_xyz_mm",
    "pubic_tubercle_right_xyz_mm",
    "inter_pubic_tubercle_mm",
    "psis_left_xyz_mm",
    "psis_right_xyz_mm",
    "inter_psis_mm",
)
#: the reference convention's body lines are trimmed to the extent of their own outline points, whose ends
#: (where the outline normal crosses 60 deg from the canal) move with the re-voxelised rims: up to 2.7 mm on
#: a turned 1 mm grid, so a wider length tolerance there
REFERENCE_LINE_TOL_MM = 3.5
REFERENCE_LINES = (
    "anterior_body_height_mm",
    "posterior_body_height_mm",
    "superior_endplate_length_mm",
    "inferior_endplate_length_mm",
)


@functools.lru_cache(maxsize=3)
def _stored(case: str) -> tuple[np.ndarray, np.ndarray]:
    """The mask as stored in the data set (strided for the pelvis) and its affine."""
    name, stride, _ = CASES[case]
    path = MASKS / name
    if not path.exists():
        pytest.skip(f"shared real data not found: {path} (set XRAY3D_SHARED_DATA)")
    img = nib.load(path)
    mask = np.asanyarray(img.dataobj)[::stride, ::stride, ::stride] > 0
    return mask, img.affine @ np.diag([stride, stride, stride, 1.0])


@functools.lru_cache(maxsize=6)
def _measured(case: str, convention: str) -> dict:
    return CASES[case][2].measure(*_stored(case), convention=convention)


def reorient(mask: np.ndarray, affine: np.ndarray, codes: str) -> tuple[np.ndarray, np.ndarray]:
    """The same voxels stored with the voxel axes ``codes`` (e.g. ``"SLP"``); world positions unchanged."""
    img = nib.Nifti1Image(mask.astype(np.uint8), affine)
    ornt = orientations.ornt_transform(orientations.io_orientation(affine), orientations.axcodes2ornt(codes))
    out = img.as_reoriented(ornt)
    assert nib.aff2axcodes(out.affine) == tuple(codes)
    return np.asanyarray(out.dataobj) > 0, out.affine


def resample(
    mask: np.ndarray, affine: np.ndarray, rotation: np.ndarray, spacing_mm: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """The mask on a new grid with axes ``rotation`` (columns, world) and voxel sizes ``spacing_mm``.

    The mask is interpolated linearly and thresholded at 0.5; the grid covers the bone with a margin.
    """
    world = np.argwhere(mask) @ affine[:3, :3].T + affine[:3, 3]
    direction = rotation @ np.diag(spacing_mm)
    margin = 3.0 * max(max(spacing_mm), float(np.linalg.norm(affine[:3, :3], axis=0).max()))
    lo, hi = world.min(0) - margin, world.max(0) + margin
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    idx = corners @ np.linalg.inv(direction).T
    first, last = np.floor(idx.min(0)), np.ceil(idx.max(0))
    new = np.eye(4)
    new[:3, :3] = direction
    new[:3, 3] = direction @ first
    to_old = np.linalg.inv(affine) @ new
    shape = tuple(int(n) for n in last - first + 1)
    out = ndimage.affine_transform(
        mask.astype(np.float32), to_old[:3, :3], to_old[:3, 3], output_shape=shape, order=1, cval=0.0
    )
    return out >= 0.5, new


def deviations(a: dict, b: dict) -> dict[str, float]:
    """Per key: the distance (mm) between two world points, or |a - b| of a scalar (mm, deg)."""
    out = {}
    for key, value in a.items():
        if key.endswith("_xyz_mm"):
            out[key] = float(np.linalg.norm(np.subtract(value, b[key])))
        elif key.endswith(("_mm", "_deg")):
            out[key] = abs(float(value) - float(b[key]))
    return out


def _restored(case: str, storage: str) -> tuple[np.ndarray, np.ndarray]:
    mask, affine = _stored(case)
    if storage in OBLIQUE:
        rotation = Rotation.from_euler("xyz", OBLIQUE[storage], degrees=True).as_matrix()
        return resample(mask, affine, rotation, (float(np.linalg.norm(affine[:3, :3], axis=0).min()),) * 3)
    if storage in ANISOTROPIC:
        return resample(mask, affine, np.eye(3), ANISOTROPIC[storage])
    return reorient(mask, affine, storage)


def _check(case: str, convention: str, storage: str) -> None:
    base = _measured(case, convention)
    mask, affine = _restored(case, storage)
    moved = CASES[case][2].measure(mask, affine, convention=convention)
    assert moved.keys() == base.keys()
    dev = deviations(base, moved)
    if storage in REORIENTATIONS:
        bad = {k: round(v, 3) for k, v in dev.items() if v > SAME_VOXELS_TOL}
    else:
        point_tol, length_tol, angle_tol = RESAMPLED_TOL[case]
        coarsest = float(np.linalg.norm(affine[:3, :3], axis=0).max())
        point_tol, length_tol = max(point_tol, TOL_VOXELS * coarsest), max(length_tol, TOL_VOXELS * coarsest)
        if case == "hip" and convention == "reference":
            dev = {k: v for k, v in dev.items() if k not in REFERENCE_HIP_EXTREMES}

        def tol(key: str) -> float:
            if key.endswith("_xyz_mm"):
                return point_tol
            if key.endswith("_deg"):
                return angle_tol
            if convention == "reference" and key in REFERENCE_LINES:
                return max(length_tol, REFERENCE_LINE_TOL_MM)
            return length_tol

        bad = {k: round(v, 2) for k, v in dev.items() if v > tol(k)}
    assert not bad, f"{case} ({convention}) stored as {storage} differs from the stored mask: {bad}"


@pytest.mark.parametrize("storage", REORIENTATIONS)
@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("case", ["L4", "L5"])
def test_vertebra_reoriented_voxels_give_the_same_answer(case: str, convention: str, storage: str) -> None:
    _check(case, convention, storage)


@pytest.mark.parametrize("storage", ["SLP", "ILA", "LAS"])
@pytest.mark.parametrize("convention", CONVENTIONS)
def test_hip_reoriented_voxels_give_the_same_answer(convention: str, storage: str) -> None:
    _check("hip", convention, storage)


@pytest.mark.parametrize("storage", [*OBLIQUE, *ANISOTROPIC])
@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("case", ["L4", "L5"])
def test_vertebra_resampled_grid_gives_the_same_answer(case: str, convention: str, storage: str) -> None:
    _check(case, convention, storage)


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["LPS", "RPI", "RAS", "PIL"])
@pytest.mark.parametrize("convention", CONVENTIONS)
def test_hip_more_reorientations(convention: str, storage: str) -> None:
    _check("hip", convention, storage)


@pytest.mark.slow
@pytest.mark.parametrize("storage", [*OBLIQUE, *ANISOTROPIC])
@pytest.mark.parametrize("convention", CONVENTIONS)
def test_hip_resampled_grid_gives_the_same_answer(convention: str, storage: str) -> None:
    _check("hip", convention, storage)


def test_hip_oblique_grid_keeps_the_ischial_spines() -> None:
    """Regression: on a grid turned by 30 deg about the world z axis, the right ischial spine jumped 34 mm to
    the band's lower cut face (the ischial body below the spine is more posterior); interspinous +19 mm."""
    _check("hip", "xray3d", "oblique-b")


def test_reorient_and_resample_keep_world_positions() -> None:
    """The re-storage helpers themselves: same world voxel set after reorienting, same volume after a
    rigid resampling within a few percent."""
    mask, affine = _stored("L4")
    world = np.sort(np.round(np.argwhere(mask) @ affine[:3, :3].T + affine[:3, 3], 4), axis=0)
    for codes in ("SLP", "ILA"):
        m, a = reorient(mask, affine, codes)
        assert m.shape != mask.shape or not np.allclose(a, affine)
        moved = np.sort(np.round(np.argwhere(m) @ a[:3, :3].T + a[:3, 3], 4), axis=0)
        assert np.allclose(moved, world, atol=1e-3)
    volume = mask.sum() * abs(np.linalg.det(affine[:3, :3]))
    m, a = _restored("L4", "oblique-a")
    assert abs(m.sum() * abs(np.linalg.det(a[:3, :3])) / volume - 1.0) < 0.05
