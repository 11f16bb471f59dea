"""CTPelvic1K raw-data fixture in the per-subset naming of Zenodo record 4588403.

What is real and what is constructed:

* Three cases are the real TotalSegmentator example (``shared/data/totalsegmentator-example``, Apache-2.0):
  the real abdomen-pelvis CT at 3 mm is copied unchanged as ``dataset<k>_<case>_data.nii.gz`` and its real
  v2 segmentation is relabelled to CTPelvic1K's 4 labels (1 sacrum = TotalSegmentator ``sacrum`` +
  ``vertebrae_S1``, 2 right_hip = ``hip_right``, 3 left_hip = ``hip_left``, 4 lumbar_vertebra =
  ``vertebrae_L1..L5``). The file names are real CTPelvic1K names (CLINIC ``dataset6_CLINIC_0001``,
  CLINIC-METAL ``dataset7_CLINIC_metal_0001`` with the unprefixed mask
  ``CLINIC_metal_0001_mask_4label.nii.gz`` as shipped, KITS19 ``dataset4_case_00001``); the anatomy is the
  same scan each time. Its pelvis is cut by the scan (inferior pubis/ischium missing), so the default rules
  reject these three cases ("touches the scan border").
* One COLONOG case (``dataset2_1.3.6.1.4.1.9328.50.4.0001_3_325``) has a *real* pelvis shape:
  ``shared/data/xrayto3d-masks/COLONOG-0001_hip_msk.nii.gz`` (the reference benchmark's CTPelvic1K
  COLONOG-0001 mask, hips + sacrum merged, PIR, 0.78 mm). Constructed around it: the mask is subsampled
  every ``step`` voxels (nearest, default 3, i.e. ~2.3 mm, close to the 2.25 mm training grid, so the
  fixture stays small) and padded with ``pad`` background voxels on every side (the real mask array is a
  tight 288 mm ROI whose iliac crests touch its lateral faces; the padding makes the fixture scan larger
  than the pelvis); the merged mask is split into the three labels geometrically (sacrum = voxels within 35
  mm of the mid-sagittal plane and posterior to the centroid, right/left hip = the rest by side), and the CT
  is a synthetic HU volume: -1000 HU air, 40 HU inside an elliptic body cylinder, +700 HU bone on the mask.
  This case is complete and yields a sample under the default rules.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from xray3d.testing import require_file, shared_data_dir

__all__ = ["write_ctpelvic1k_fixture", "totalseg_to_4label", "COLONOG_CASE", "CUT_CASES"]

COLONOG_CASE = "1.3.6.1.4.1.9328.50.4.0001_3_325"
# case id -> (subset index, relative CT path, relative mask path), as extracted from the Zenodo archives
CUT_CASES: dict[str, tuple[int, str, str]] = {
    "CLINIC_0001": (
        6,
        "CTPelvic1K_dataset6_data/dataset6_CLINIC_0001_data.nii.gz",
        "ipcai2021_dataset6_Anonymized/dataset6_CLINIC_0001_mask_4label.nii.gz",
    ),
    "CLINIC_metal_0001": (
        7,
        "CTPelvic1K_dataset7_data/dataset7_CLINIC_metal_0001_data.nii.gz",
        "CTPelvic1K_dataset7_mask/CLINIC_metal_0001_mask_4label.nii.gz",
    ),
    "case_00001": (
        4,
        "KITS19/dataset4_case_00001_data.nii.gz",
        "CTPelvic1K_dataset4_mask_mappingback/dataset4_case_00001_mask_4label.nii.gz",
    ),
}
COLONOG_FILES = (
    f"COLONOG/dataset2_{COLONOG_CASE}_data.nii.gz",
    f"CTPelvic1K_dataset2_mask_mappingback/dataset2_{COLONOG_CASE}_mask_4label.nii.gz",
)
# TotalSegmentator v2 class ids -> CTPelvic1K labels
_TS_TO_4LABEL = {25: 1, 26: 1, 78: 2, 77: 3, **{i: 4 for i in range(27, 32)}}


def totalseg_to_4label(labels: np.ndarray) -> np.ndarray:
    """Relabel a TotalSegmentator v2 label map to CTPelvic1K's 4 labels (uint8)."""
    out = np.zeros(labels.shape, dtype=np.uint8)
    for ts_id, label in _TS_TO_4LABEL.items():
        out[labels == ts_id] = label
    return out


def _colonog_case(step: int, pad: int) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """Synthetic CT + constructed 4-label mask around the real COLONOG-0001 pelvis (see module docstring)."""
    src = nib.load(require_file(shared_data_dir() / "xrayto3d-masks" / "COLONOG-0001_hip_msk.nii.gz"))
    mask = np.asarray(src.dataobj)[::step, ::step, ::step] > 0
    mask = np.pad(mask, pad)
    aff = src.affine.copy()
    aff[:3, :3] = src.affine[:3, :3] * step
    aff[:3, 3] = src.affine[:3, 3] - aff[:3, :3] @ np.full(3, float(pad))

    idx = np.argwhere(mask)
    world = idx @ aff[:3, :3].T + aff[:3, 3]  # RAS mm
    centre = world.mean(axis=0)
    sacrum = (np.abs(world[:, 0] - centre[0]) <= 35.0) & (world[:, 1] < centre[1])
    labels = np.zeros(mask.shape, dtype=np.uint8)
    labels[tuple(idx.T)] = np.where(sacrum, 1, np.where(world[:, 0] > centre[0], 2, 3))

    # elliptic body cylinder along the axis that is closest to S-I, bone at +700 HU
    si_axis = int(np.argmax(np.abs(aff[2, :3])))
    other = [a for a in range(3) if a != si_axis]
    grids = np.meshgrid(*[np.arange(mask.shape[a]) for a in other], indexing="ij")
    half = [mask.shape[a] / 2.0 for a in other]
    inside = sum(((g - h + 0.5) / (0.98 * h)) ** 2 for g, h in zip(grids, half, strict=True)) <= 1.0
    body = np.expand_dims(inside, si_axis)
    ct = np.where(body, 40, -1000).astype(np.int16) * np.ones(mask.shape, dtype=np.int16)
    ct[mask] = 700
    return nib.Nifti1Image(ct, aff), nib.Nifti1Image(labels, aff)


def write_ctpelvic1k_fixture(
    raw_dir: str | Path,
    cut_cases: tuple[str, ...] = tuple(CUT_CASES),
    colonog: bool = True,
    step: int = 3,
    pad: int = 6,
) -> Path:
    """Write a CTPelvic1K raw folder as extracted from the Zenodo archives (see the module docstring).

    Args:
        raw_dir: raw dataset folder (created if missing).
        cut_cases: which of :data:`CUT_CASES` (the real, inferiorly cut TotalSegmentator scan) to write.
        colonog: write the complete COLONOG case (real pelvis shape, synthetic CT).
        step: subsampling of the 0.78 mm COLONOG mask (1 keeps the native grid: 368x360x368, slower).
        pad: background voxels added on every side of the COLONOG mask.

    Returns:
        ``raw_dir``.
    """
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    if cut_cases:
        example = shared_data_dir() / "totalsegmentator-example"
        ct_src = require_file(example / "example_ct.nii.gz")
        seg = nib.load(require_file(example / "example_seg.nii.gz"))
        labels = nib.Nifti1Image(totalseg_to_4label(np.asarray(seg.dataobj)), seg.affine)
        for case in cut_cases:
            _, ct_rel, mask_rel = CUT_CASES[case]
            (raw_dir / ct_rel).parent.mkdir(parents=True, exist_ok=True)
            (raw_dir / mask_rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ct_src, raw_dir / ct_rel)
            nib.save(labels, raw_dir / mask_rel)
    if colonog:
        ct, labels = _colonog_case(step, pad)
        for img, rel in zip((ct, labels), COLONOG_FILES, strict=True):
            (raw_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            nib.save(img, raw_dir / rel)
    return raw_dir
